"""Churn without leaks: databases come and go (one dropped while it may be being visited),
pg_stat_statements is dropped and created again; series leave with what they describe, and the
exporter's threads and server sessions return to where they were.

(Memory over a long churn is a soak, not a test: BENCHMARKS.md.)
"""

import threading

import psycopg

from exporter.demo.embedded import LocalPostgres
from support import RunExporter, Samples, exporter_config, scrape, value, wait_for

CREATED, KEPT = 30, 5


def _visited(port: int, metric: str = "pg_tables_all_tables") -> set[str]:
    """The databases a per-database collector published (by default `tables`, every second)."""
    return {dict(labels)["datname"] for name, labels in scrape(port, timeout=2) if name == metric}


def _sessions(postgres: LocalPostgres) -> int:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg-health-exporter'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_databases_and_extensions_come_and_go_without_leaks(
    private_postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    postgres = private_postgres
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    config = exporter_config(
        postgres.dsn(),
        collectors={
            "tables": {"interval": "1s", "timeout": "1s"},
            "statements": {"interval": "1s", "timeout": "1s"},
        },
    )
    max_connections = config.targets[0].max_connections
    names = [f"churn_{n}" for n in range(CREATED)]
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE DATABASE {name}")
    exporter = run_exporter(config)
    port = exporter.server.port
    wait_for(lambda: set(names) <= _visited(port), timeout=60, what="every database visited")
    # index_health runs once at start-up, then every 15 minutes: its series of a database
    # dropped now would stay that long if nothing else took them out.
    wait_for(
        lambda: set(names) <= _visited(port, "pg_index_health_problems"),
        timeout=60,
        what="index_health's first run",
    )
    threads_running = threading.active_count()

    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
        wait_for(
            lambda: (
                value(
                    scrape(port, timeout=2),
                    "pg_exporter_collector_available",
                    collector="statements",
                )
                == 0
            ),
            what="statements unavailable without its extension",
        )
        conn.execute("CREATE EXTENSION pg_stat_statements")
        wait_for(
            lambda: (
                value(scrape(port, timeout=2), "pg_exporter_collector_up", collector="statements")
                == 1
            ),
            what="statements back with its extension",
        )
        # Dropped under the collector's feet: FORCE ends its visit if one is under way.
        for name in names[KEPT:]:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")

    gone = set(names[KEPT:])

    def stale(samples: Samples) -> list[str]:
        return [n for n, labels in samples if gone & {v for _, v in labels}]

    # Every collector's series of them, a collector on a 30-minute interval's included: gone
    # once a probe sees the databases go, not at the collector's next run.
    wait_for(
        lambda: not stale(scrape(port, timeout=2)), timeout=30, what="no series of the dropped"
    )
    # The kept ones stay published. A wait, not a single look: on a loaded machine one visit can
    # miss its 1 s timeout, and a database whose visit failed is left out of that run's series.
    wait_for(lambda: set(names[:KEPT]) <= _visited(port), timeout=30, what="the kept visited")
    assert value(scrape(port, timeout=2), "pg_up", target="pg") == 1
    # Back to where they were: no thread or session per database visited or dropped.
    assert threading.active_count() <= threads_running
    assert _sessions(postgres) <= max_connections
