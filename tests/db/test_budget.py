"""The database-time budget on a real server: a tiny budget stretches the expensive collectors
and the exporter's database time stays under it; the fast collectors keep their interval."""

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, fresh_database, scrape, value, wait_for

ROLE = "budget_watcher"
TABLES = 400
# ms of database time per minute: well above the fast collector's ~60 runs of a few ms,
# far below what per-table statistics every 2 s would take on 400 tables.
BUDGET_MS = 400
WINDOW_SECONDS = 20.0


@pytest.fixture
def busy_database(postgres: LocalPostgres) -> Iterator[str]:
    with fresh_database(postgres) as name:
        with psycopg.connect(postgres.dsn(dbname=name), autocommit=True) as conn:
            conn.execute(
                f"""DO $$ BEGIN FOR i IN 1..{TABLES} LOOP
                      EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
                    END LOOP; END $$"""
            )
            conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
            conn.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
        yield name


def exec_ms(postgres: LocalPostgres) -> float:
    """The exporter role's statement time so far, as pg_stat_statements counts it."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = %s",
            (ROLE,),
        ).fetchone()
    assert row is not None
    return float(row[0])


def test_a_tiny_budget_stretches_the_expensive_collectors_only(
    postgres: LocalPostgres, busy_database: str, run_exporter: Callable[[Config], Exporter]
) -> None:
    only = {"database", "tables", "indexes", "statio"}
    collectors: dict[str, object] = {
        name: {"enabled": False} for name in builtin_specs() if name not in only
    }
    collectors |= {
        "database": {"interval": "1s", "timeout": "1s"},
        **{name: {"interval": "2s", "timeout": "2s"} for name in ("tables", "indexes", "statio")},
    }
    config = exporter_config(
        postgres.dsn(user=ROLE, dbname=busy_database),
        interval="1s",
        collectors=collectors,
    )
    target = config.targets[0].model_copy(update={"database_time_budget": BUDGET_MS / 1000 / 60})
    config = config.model_copy(update={"targets": (target,)})
    exporter = run_exporter(config)
    port = exporter.server.port

    def stretched() -> dict[str, float | None] | None:
        samples = scrape(port)
        found = {
            name: value(samples, "pg_exporter_collector_interval_seconds", collector=name)
            for name in only
        }
        return found if (found["tables"] or 0) > 2 else None

    intervals = wait_for(stretched, timeout=60, what="the budget to stretch tables")
    assert intervals["database"] == 1  # the fast collector keeps its interval
    samples = scrape(port)
    assert value(samples, "pg_exporter_database_time_budget_ratio") == pytest.approx(
        BUDGET_MS / 1000 / 60
    )

    # From now on, measured by the server itself: the exporter stays within its budget.
    before = exec_ms(postgres)
    threading.Event().wait(WINDOW_SECONDS)  # the measurement window itself, not a wait for state
    used = exec_ms(postgres) - before
    assert used <= BUDGET_MS * WINDOW_SECONDS / 60, (used, intervals)
    # Stretched, not failing: the data is there and fresh for its interval.
    samples = scrape(port)
    assert value(samples, "pg_exporter_collector_up", collector="tables") == 1
    assert value(samples, "pg_tables_all_tables", datname=busy_database) == TABLES
