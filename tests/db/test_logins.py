"""Authentication changes read as down within one probe interval: the probe logs in anew.

The pool keeps sessions for up to an hour; a probe that only used one of them would keep
pg_up at 1 while every new connection is refused.
"""

import logging
import time
from collections.abc import Callable

import psycopg
import pytest
from pydantic import SecretStr

from exporter.app import Exporter
from exporter.demo.embedded import LocalPostgres
from support import RunExporter, exporter_config, scrape, value, wait_for
from support.auth import password_role

ROLE = "login_probe"
PASSWORD = "first-Secret-1"
UP_INTERVAL = 1.0
CONNECT_TIMEOUT = 2.0
SLACK = 1.5  # scheduling on a shared machine, the scrape's own polling, the probe's jitter


@pytest.fixture
def scram_postgres(private_postgres: LocalPostgres) -> LocalPostgres:
    """The private server, asking ROLE for its password over TCP (others keep trust)."""
    password_role(private_postgres, ROLE, PASSWORD)
    return private_postgres


def as_superuser(server: LocalPostgres, statement: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(statement)


def pg_up(port: int) -> float | None:
    return value(scrape(port, timeout=2), "pg_up", target="pg")


def down_within_an_interval(
    exporter: Exporter, caplog: pytest.LogCaptureFixture, change: Callable[[], None]
) -> str:
    """Apply `change` once collection runs; pg_up must be 0 within one probe interval plus
    connect_timeout. Returns the one log line's error."""
    port = exporter.server.port
    wait_for(
        lambda: value(scrape(port), "pg_exporter_collector_up", collector="database") == 1,
        what="first collection",
    )
    caplog.clear()
    change()
    changed_at = time.monotonic()
    wait_for(lambda: pg_up(port) == 0, timeout=60, what="pg_up 0")
    took = time.monotonic() - changed_at
    assert took <= UP_INTERVAL + CONNECT_TIMEOUT + SLACK, f"pg_up 0 only after {took:.1f}s"
    down = [r for r in caplog.records if r.getMessage() == "target is down"]
    assert len(down) == 1
    return str(down[0].__dict__["error"])


def test_rotated_password_reads_as_down(
    scram_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = exporter_config(
        f"host=127.0.0.1 port={scram_postgres.port} dbname=postgres user={ROLE}"
    )
    target = config.targets[0].model_copy(update={"password": SecretStr(PASSWORD)})
    exporter = run_exporter(config.model_copy(update={"targets": (target,)}))
    error = down_within_an_interval(
        exporter,
        caplog,
        lambda: as_superuser(scram_postgres, f"ALTER ROLE {ROLE} PASSWORD 'second-Secret-2'"),
    )
    assert "password authentication failed" in error
    assert PASSWORD not in caplog.text


def test_revoked_login_reads_as_down(
    private_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    as_superuser(private_postgres, f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
    exporter = run_exporter(exporter_config(private_postgres.dsn(user=ROLE)))
    error = down_within_an_interval(
        exporter, caplog, lambda: as_superuser(private_postgres, f"ALTER ROLE {ROLE} NOLOGIN")
    )
    assert "not permitted to log in" in error

    as_superuser(private_postgres, f"ALTER ROLE {ROLE} LOGIN")
    port = exporter.server.port
    wait_for(lambda: pg_up(port) == 1, timeout=30, what="pg_up 1 once LOGIN is back")
