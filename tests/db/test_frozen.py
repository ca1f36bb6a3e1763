"""A frozen server: TCP still accepts and acknowledges, nothing answers.

pg_up must go to 0 within one probe interval plus connect_timeout, with one log line naming
the cause, however the pool's sessions and the visiting slot are stuck meanwhile, and within
connect_timeout when the pooled session was idle (the heartbeat); and SIGTERM must end the
daemon within 5 s, opening no session after it.
"""

import logging
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection.scheduler import HEARTBEAT_SECONDS
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import (
    FAST_COLLECTORS,
    RunExporter,
    exporter_config,
    parse_exposition,
    scrape,
    value,
    wait_for,
)
from support.daemon import Daemon
from support.freeze import frozen
from support.tcpproxy import StallingProxy

UP_INTERVAL = 1.0
CONNECT_TIMEOUT = 2.0
# Scheduling on a shared machine, the scrape's own polling, the probe's jitter.
SLACK = 1.5


def config(dsn: str) -> Config:
    # While frozen, the pool's only session is stuck in a collector's statement (5 s timeouts:
    # for about 11 s until the watchdog cuts it), and the visiting slot in `tables`' connect
    # to each database in turn: neither can give the probe a session.
    return exporter_config(
        dsn,
        interval="5s",
        up_interval=f"{UP_INTERVAL:g}s",
        collectors={"tables": {"interval": "1s", "timeout": "1s"}},
    )


def create_databases(server: LocalPostgres) -> None:
    """Databases for `tables` to visit: while frozen, each visit is stuck in connect for
    connect_timeout, one after the other."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for n in range(6):
            conn.execute(f"CREATE DATABASE frozen_{n}")


def pg_up(port: int) -> float | None:
    return value(scrape(port, timeout=2), "pg_up", target="pg")


def collecting(port: int) -> bool:
    samples = scrape(port, timeout=2)
    return (
        value(samples, "pg_up", target="pg") == 1
        and value(samples, "pg_exporter_collector_up", collector="tables") == 1
    )


def stays(port: int, expected: float, seconds: float) -> None:
    """pg_up keeps `expected` on every scrape for `seconds`."""
    pause = threading.Event()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pg_up(port) == expected
        pause.wait(0.2)


def test_frozen_server_reads_as_down_within_an_interval_and_connect_timeout(
    private_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    create_databases(private_postgres)
    exporter = run_exporter(config(private_postgres.dsn()))
    port = exporter.server.port
    wait_for(lambda: collecting(port), what="first collection")
    caplog.clear()

    with frozen(private_postgres):
        frozen_at = time.monotonic()
        wait_for(lambda: pg_up(port) == 0, timeout=60, what="pg_up 0 while frozen")
        took = time.monotonic() - frozen_at
        assert took <= UP_INTERVAL + CONNECT_TIMEOUT + SLACK, f"pg_up 0 only after {took:.1f}s"
        stays(port, 0, 3 * (UP_INTERVAL + CONNECT_TIMEOUT))  # no flapping back to up
    down = [r for r in caplog.records if r.getMessage() == "target is down"]
    assert len(down) == 1, [r.__dict__.get("error") for r in down]
    assert "within 2s" in down[0].__dict__["error"], down[0].__dict__["error"]
    assert not [r for r in caplog.records if r.getMessage() == "target is up"]

    wait_for(lambda: collecting(port), timeout=60, what="collection after the freeze")
    assert [r for r in caplog.records if r.getMessage() == "target is up"]


def test_sigterm_while_frozen_stops_within_5s_and_visits_nothing_more(
    private_postgres: LocalPostgres, tmp_path: Path
) -> None:
    create_databases(private_postgres)
    # Through a proxy that notes when each connection comes, to see what is opened after the
    # signal; it forwards to the frozen server, so those connections hang as they would.
    with StallingProxy(private_postgres.port) as proxy:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"up_interval: {UP_INTERVAL:g}s\n"
            "targets:\n  - name: pg\n"
            f"    dsn: 'host=127.0.0.1 port={proxy.port} dbname=postgres user=postgres'\n"
            f"    connect_timeout: {CONNECT_TIMEOUT:g}s\n"
            "collectors:\n"
            "  tables: {interval: 1s, timeout: 1s}\n"
            "  database: {interval: 5s, timeout: 5s}\n"
            "  connections: {interval: 5s, timeout: 5s}\n"
        )
        with Daemon(config) as daemon:

            def collecting() -> bool:
                body = daemon.get(timeout=2)
                samples = parse_exposition(body or "")
                return value(samples, "pg_exporter_collector_up", collector="tables") == 1

            wait_for(collecting, what="first collection")
            with frozen(private_postgres):
                frozen_at = time.monotonic()
                # Jobs are stuck now: a connection opened since the freeze hangs in its login.
                wait_for(
                    lambda: any(t > frozen_at for t in proxy.accepted),
                    what="a connection stuck on the frozen server",
                )
                signalled = time.monotonic()
                daemon.process.send_signal(signal.SIGTERM)
                code = daemon.process.wait(timeout=60)
                took = time.monotonic() - signalled
            assert code == 0, daemon.log()
            assert took <= 5.0, f"exited {took:.1f}s after SIGTERM"
            # A connect under way when the signal came may land just after it; none later.
            late = [round(t - signalled, 2) for t in proxy.accepted if t > signalled + 0.25]
            assert not late, f"connections opened after SIGTERM, at +{late} s"


def down_within_connect_timeout(
    server: LocalPostgres, port: int, caplog: pytest.LogCaptureFixture, *, reason: str
) -> None:
    """Frozen now, the target reads as down within connect_timeout, logged once with
    `reason` in its error."""
    with frozen(server):
        frozen_at = time.monotonic()
        wait_for(lambda: pg_up(port) == 0, timeout=30, what="pg_up 0 while frozen")
        took = time.monotonic() - frozen_at
    assert took <= CONNECT_TIMEOUT + SLACK, f"pg_up 0 only after {took:.1f}s"
    down = [r for r in caplog.records if r.getMessage() == "target is down"]
    assert len(down) == 1 and reason in down[0].__dict__["error"], down


def test_a_server_frozen_between_probes_reads_as_down_within_connect_timeout(
    private_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """With probes 30 s apart, the heartbeat on the idle pooled session finds the freeze
    within connect_timeout, and its round trips open no session of their own."""
    caplog.set_level(logging.INFO)
    # The fast collectors only, every 30 s: after their first runs nothing else uses a session
    # until well after the test, so the pooled one is idle and no other login comes meanwhile.
    only = {name: {"enabled": False} for name in builtin_specs() if name not in FAST_COLLECTORS}
    config = exporter_config(private_postgres.dsn(), interval="30s", collectors=only)
    exporter = run_exporter(config)
    port = exporter.server.port

    def sessions() -> set[tuple[object, ...]]:
        with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity"
                " WHERE application_name = 'pg-health-exporter'"
            ).fetchall()
        return set(rows)

    def first_runs_done() -> bool:
        samples = scrape(port, timeout=2)
        return all(
            value(samples, "pg_exporter_collector_up", collector=name) == 1
            for name in FAST_COLLECTORS
        )

    wait_for(first_runs_done, what="the first runs")
    before = sessions()
    # Several heartbeats' time, well before the next probe or collection (30 s).
    threading.Event().wait(3 * HEARTBEAT_SECONDS)  # an observation window, not a wait for state
    assert sessions() == before  # each on the pooled session: no login

    down_within_connect_timeout(private_postgres, port, caplog, reason="on an open session")


def test_a_freeze_while_a_collector_holds_the_only_session_reads_as_down_in_time(
    private_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """No session is idle for a heartbeat: a collector's long statement holds the pool's only
    one. Frozen, that statement waits until its own reply limit (about 26 s here); the
    heartbeat sees a reply overdue and asks the postmaster, which does not answer either, so
    pg_up is 0 within connect_timeout all the same."""
    caplog.set_level(logging.INFO)
    only = {name: {"enabled": False} for name in builtin_specs() if name not in FAST_COLLECTORS}
    busy = {
        "help": "Holds the pooled session.",
        "interval": "20s",
        "timeout": "20s",
        "queries": [{"sql": "SELECT 1 AS here FROM pg_sleep(15)", "metrics": {"here": "gauge"}}],
    }
    config = exporter_config(
        private_postgres.dsn(), interval="30s", collectors={**only, "busy": busy}
    )
    exporter = run_exporter(config)
    port = exporter.server.port

    def sleeping() -> bool:
        """The busy collector's statement runs, and has for more than a heartbeat's wait."""
        with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                " 'pg-health-exporter' AND query LIKE '%%pg_sleep(15)%%' AND state = 'active'"
                " AND now() - query_start > interval '2 seconds'"
                " AND now() - query_start < interval '10 seconds'"
            ).fetchone()
        return row is not None and row[0] == 1 and pg_up(port) == 1

    # After its first run (which may take the visiting slot, leaving the pooled session idle)
    # every run of the busy collector holds the pool's only session.
    wait_for(
        lambda: value(scrape(port, timeout=2), "pg_exporter_collector_up", collector="busy") == 1,
        timeout=60,
        what="the busy collector's first run",
    )
    wait_for(sleeping, timeout=60, what="the busy collector's statement under way")
    down_within_connect_timeout(private_postgres, port, caplog, reason="for a reply")
