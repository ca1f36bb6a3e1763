"""The database-time budget on a real server: a tiny budget stretches the expensive collectors
and the exporter's database time stays under it; the fast collectors keep their interval."""

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.collection.jobs import CollectorJob, ProbeJob
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.targets.registry import TargetRegistry
from support import exporter_config, fresh_database, scrape, value, wait_for

ROLE = "budget_watcher"
TABLES = 400
# ms of database time per minute: well above the fast collector's 60 runs (pg_stat_activity:
# no statistics file to read, even before PostgreSQL 15), far below what per-table statistics
# every 2 s would take on 400 tables.
BUDGET_MS = 400
WINDOW_SECONDS = 30.0
# Runs are whole: a window may hold one run more or less of each stretched collector than
# the average, so the window is allowed half its budget again.
GRANULARITY = 1.5


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
    only = {"connections", "tables", "indexes", "statio"}
    collectors: dict[str, object] = {
        name: {"enabled": False} for name in builtin_specs() if name not in only
    }
    collectors |= {
        "connections": {"interval": "1s", "timeout": "1s"},
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
    assert intervals["connections"] == 1  # the fast collector keeps its interval
    samples = scrape(port)
    assert value(samples, "pg_exporter_database_time_budget_ratio") == pytest.approx(
        BUDGET_MS / 1000 / 60
    )

    # From now on, measured by the server itself: the exporter stays within its budget.
    before = exec_ms(postgres)
    threading.Event().wait(WINDOW_SECONDS)  # the measurement window itself, not a wait for state
    used = exec_ms(postgres) - before
    assert used <= GRANULARITY * BUDGET_MS * WINDOW_SECONDS / 60, (used, intervals)
    # Stretched, not failing: the data is there and fresh for its interval.
    samples = scrape(port)
    assert value(samples, "pg_exporter_collector_up", collector="tables") == 1
    assert value(samples, "pg_tables_all_tables", datname=busy_database) == TABLES


def test_a_query_of_its_own_slower_cadence_is_priced_at_its_share_of_every_run(
    postgres: LocalPostgres,
) -> None:
    """A collector's runs that skip its slower query (`tables`' sizes every 10 minutes) are
    charged their share of it: otherwise the budget would see only the cheap runs, and give
    the other collectors the time that query takes."""
    paced = {
        "help": "A cheap query every run, a slow one every 2 s.",
        "interval": "1s",
        "timeout": "1s",
        "queries": [
            {"name": "cheap", "sql": "SELECT 1 AS cheap", "metrics": {"cheap": "gauge"}},
            {
                "name": "slow",
                "interval": "2s",
                "sql": "SELECT 1 AS slow FROM pg_sleep(0.2)",
                "metrics": {"slow": "gauge"},
            },
        ],
    }
    config = parse_config(
        {"targets": [{"name": "pg", "dsn": postgres.dsn()}], "collectors": {"paced": paced}}
    )
    collector = next(c for c in config.catalogue if c.name == "paced")
    registry = TargetRegistry()
    priced: list[float] = []

    def on_cost(job: CollectorJob, seconds: float) -> float:
        priced.append(seconds)
        return 1.0

    try:
        target = registry.add(config.targets[0])
        store = Store(self_metrics=self_metrics)
        ProbeJob(target, store)()
        job = CollectorJob(target, collector, store, max_age_intervals=3, on_cost=on_cost)
        for _ in range(6):  # every 0.5 s or so: about a run in four runs the slow query
            job()
            threading.Event().wait(0.5)  # the runs' cadence itself, not a wait for state
    finally:
        registry.close()
    slow_runs = job.status.database_seconds_total // 0.2
    assert slow_runs >= 2, job.status  # the first run, and again after 2 s
    assert priced[0] >= 0.2  # the first run: all of it (no cadence known yet)
    # Each later run, whether the slow query ran in it or not, pays for the time since the
    # run before (at least the 0.5 s pause) over the query's 2 s, and never all of it again.
    for seconds in priced[1:]:
        assert 0.2 * 0.5 / 2 <= seconds < priced[0], priced


def test_a_collector_stretched_by_anothers_run_shows_its_new_interval_at_once(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """Two collectors of the same cost share a budget. Whichever runs first is stretched to
    fit the budget alone, then, when the other's cost is known, twice as far: the exporter
    logs that change, and /metrics must show it too, not the old interval until that
    collector's next run (many minutes away)."""
    sleeper = {
        "help": "A statement that keeps the server busy for 0.3 s.",
        "interval": "2s",
        "timeout": "2s",
        "queries": [
            {
                "name": "busy",
                "sql": "SELECT 1 AS busy FROM pg_sleep(0.3)",
                "metrics": {"busy": "gauge"},
            }
        ],
    }
    collectors: dict[str, object] = {name: {"enabled": False} for name in builtin_specs()}
    collectors |= {"sleeper_a": sleeper, "sleeper_b": sleeper}
    config = exporter_config(postgres.dsn(), collectors=collectors)
    # 60 ms a minute: 0.3 s a run fits once in 300 s alone, once in 600 s as half of it.
    target = config.targets[0].model_copy(update={"database_time_budget": 0.001})
    exporter = run_exporter(config.model_copy(update={"targets": (target,)}))

    def both_stretched() -> dict[str, float] | None:
        samples = scrape(exporter.server.port)
        found = {
            name: value(samples, "pg_exporter_collector_interval_seconds", collector=name)
            for name in ("sleeper_a", "sleeper_b")
        }
        settled = all((seconds or 0) >= 500 for seconds in found.values())
        return {k: v or 0.0 for k, v in found.items()} if settled else None

    intervals = wait_for(both_stretched, timeout=30, what="both intervals shown as shared")
    assert max(intervals.values()) <= 1.25 * min(intervals.values()), intervals
