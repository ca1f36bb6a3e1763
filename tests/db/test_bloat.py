"""The bloat collector: planted bloat is flagged by both methods, healthy tables are not, and
every relation without a number is counted with the reason."""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import Samples, parse_exposition, value, wait_for

# Above every system catalog of a fresh database (pg_proc is under 1 MiB on 13-18), so the
# counts below are about the tables each test plants.
MIN_BYTES = 1024 * 1024
ROWS = 60_000  # a 60,000-row bigint primary key is about 1.3 MiB

Conn = psycopg.Connection[tuple[Any, ...]]


def collect(dsn: str, database: str, collector: str, **params: object) -> Samples:
    """Run one built-in collector once, in one database, with some params changed."""
    collectors: dict[str, Any] = {name: {"enabled": False} for name in builtin_specs()}
    collectors[collector] = {"enabled": True, "params": params}
    config = parse_config(
        {
            "targets": [
                {
                    "name": "pg",
                    "dsn": dsn,
                    "connect_timeout": "5s",
                    "databases": {"include": [database]},
                }
            ],
            "collectors": collectors,
        }
    )
    samples = parse_exposition(run_once(config).body.decode())
    assert value(samples, "pg_exporter_collector_up", collector=collector) == 1, samples
    return samples


def table_stats(conn: Conn, table: str) -> tuple[int, int, bool]:
    """(rows deleted, rows modified since analyze, analyzed) as the statistics system has them."""
    row = conn.execute(
        "SELECT n_tup_del, n_mod_since_analyze,"
        " coalesce(last_analyze, last_autoanalyze) IS NOT NULL"
        " FROM pg_stat_user_tables WHERE relname = %s",
        (table,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def create_table(dsn: str, table: str, *, delete_most: bool = False) -> None:
    """A table of ROWS rows with autovacuum off; with delete_most, 90% deleted evenly.

    The changes are made on a connection of their own, closed before anything else, and the
    caller waits until the statistics have them: an ANALYZE that overtook them would leave
    them counted as modifications since that ANALYZE.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, payload text)"
            " WITH (autovacuum_enabled = false)"
        )
        conn.execute(
            f"INSERT INTO {table} SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, %s) i",
            (ROWS,),
        )
        if delete_most:
            conn.execute(f"DELETE FROM {table} WHERE id % 10 <> 0")
    deleted = ROWS * 9 // 10 if delete_most else 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_for(
            lambda: table_stats(conn, table)[0] >= deleted and table_stats(conn, table)[1] > 0,
            what=f"statistics of {table}",
        )


def vacuum_analyze(dsn: str, *tables: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        for table in tables:
            # Before PostgreSQL 15 the statistics collector hears of the ANALYZE asynchronously.
            wait_for(
                lambda t=table: table_stats(conn, t)[1:] == (0, True),  # type: ignore[misc]
                what=f"ANALYZE of {table} in the statistics",
            )


@pytest.fixture
def planted(postgres: LocalPostgres, database: str) -> str:
    """`bloated` (90% of its rows deleted, then VACUUM ANALYZE) next to `healthy`."""
    dsn = postgres.dsn(database)
    create_table(dsn, "bloated", delete_most=True)
    create_table(dsn, "healthy")
    vacuum_analyze(dsn, "bloated", "healthy")
    return database


def bloat(samples: Samples, kind: str, name: str, method: str) -> float | None:
    label = "relname" if kind == "table" else "indexrelname"
    return value(samples, f"pg_bloat_{kind}_ratio", method=method, **{label: name})


def test_planted_bloat_by_both_methods(postgres: LocalPostgres, planted: str) -> None:
    with psycopg.connect(postgres.dsn(planted), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
    samples = collect(postgres.dsn(planted), planted, "bloat", min_bytes=MIN_BYTES)
    for method in ("estimate", "pgstattuple"):
        bloated = bloat(samples, "table", "bloated", method)
        healthy = bloat(samples, "table", "healthy", method)
        assert bloated is not None and bloated > 0.8, (method, bloated)
        assert healthy is not None and healthy < 0.1, (method, healthy)
        bloated_index = bloat(samples, "index", "bloated_pkey", method)
        healthy_index = bloat(samples, "index", "healthy_pkey", method)
        assert bloated_index is not None and bloated_index > 0.8, (method, bloated_index)
        assert healthy_index is not None and healthy_index < 0.1, (method, healthy_index)
        size = value(samples, "pg_bloat_table_bytes", relname="bloated", method=method)
        assert size is not None and size > 0.8 * MIN_BYTES * 4  # most of a ~8 MiB table
        assert value(samples, "pg_bloat_tables_measured", method=method, datname=planted) == 2
        assert value(samples, "pg_bloat_indexes_measured", method=method, datname=planted) == 2
    unmeasured = {
        dict(labels)["reason"]
        for (name, labels), _ in samples.items()
        if name in ("pg_bloat_tables_unmeasured", "pg_bloat_indexes_unmeasured")
    }
    assert unmeasured == set()


def test_only_flagged_relations_when_there_is_no_room(
    postgres: LocalPostgres, planted: str
) -> None:
    samples = collect(
        postgres.dsn(planted),
        planted,
        "bloat",
        min_bytes=MIN_BYTES,
        max_rows=0,
        flag_ratio=0.5,
        flag_bytes=MIN_BYTES,
    )
    # Flagged: the bloated table (~7 MiB of bloat) and its index (~1.2 MiB), not the healthy.
    assert bloat(samples, "table", "bloated", "estimate") is not None
    assert bloat(samples, "table", "healthy", "estimate") is None
    assert bloat(samples, "index", "bloated_pkey", "estimate") is not None
    assert bloat(samples, "index", "healthy_pkey", "estimate") is None
    # The totals still count every relation measured.
    assert value(samples, "pg_bloat_tables_measured", method="estimate", datname=planted) == 2


@pytest.fixture
def monitor_role(postgres: LocalPostgres) -> Iterator[str]:
    """A login role that is only a member of pg_monitor (owns nothing, may SELECT nothing)."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'bloat_monitor'").fetchone()
        if not exists:
            conn.execute("CREATE ROLE bloat_monitor LOGIN IN ROLE pg_monitor")
    yield "bloat_monitor"


def test_least_privilege_role_gets_pgstattuple_numbers(
    postgres: LocalPostgres, planted: str, monitor_role: str
) -> None:
    with psycopg.connect(postgres.dsn(planted), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
    dsn = postgres.dsn(planted, user=monitor_role)
    samples = collect(dsn, planted, "bloat", min_bytes=MIN_BYTES)
    # pg_stats hides the columns of tables the role may not read: no estimate, with the reason.
    for table in ("bloated", "healthy"):
        assert bloat(samples, "table", table, "estimate") is None
        assert bloat(samples, "index", f"{table}_pkey", "estimate") is None
    reason = {"method": "estimate", "reason": "no_privilege", "datname": planted}
    assert value(samples, "pg_bloat_tables_unmeasured", **reason) == 2
    assert value(samples, "pg_bloat_indexes_unmeasured", **reason) == 2
    # pgstattuple's functions are granted to pg_stat_scan_tables, part of pg_monitor.
    bloated = bloat(samples, "table", "bloated", "pgstattuple")
    healthy = bloat(samples, "table", "healthy", "pgstattuple")
    assert bloated is not None and bloated > 0.8
    assert healthy is not None and healthy < 0.1
    bloated_index = bloat(samples, "index", "bloated_pkey", "pgstattuple")
    assert bloated_index is not None and bloated_index > 0.8


def test_no_estimate_without_fresh_statistics(postgres: LocalPostgres, database: str) -> None:
    dsn = postgres.dsn(database)
    create_table(dsn, "healthy")
    create_table(dsn, "unanalyzed")
    create_table(dsn, "stale")
    vacuum_analyze(dsn, "healthy", "stale")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE stale SET payload = payload WHERE id % 2 = 0")
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_for(lambda: table_stats(conn, "stale")[1] >= ROWS // 2, what="updates of stale")
    samples = collect(dsn, database, "bloat", min_bytes=MIN_BYTES)
    assert bloat(samples, "table", "healthy", "estimate") is not None
    assert bloat(samples, "table", "unanalyzed", "estimate") is None
    assert bloat(samples, "table", "stale", "estimate") is None
    unmeasured = {
        (dict(labels)["method"], dict(labels)["reason"]): v
        for (name, labels), v in samples.items()
        if name == "pg_bloat_tables_unmeasured"
    }
    assert unmeasured == {
        ("estimate", "never_analyzed"): 1,
        ("estimate", "stale_statistics"): 1,
        ("pgstattuple", "not_installed"): 3,
    }
    assert value(samples, "pg_bloat_indexes_unmeasured", reason="never_analyzed") == 1


def test_scans_stop_at_the_budget_and_the_size_cap(postgres: LocalPostgres, planted: str) -> None:
    dsn = postgres.dsn(planted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
    samples = collect(dsn, planted, "bloat", min_bytes=MIN_BYTES, scan_budget_seconds=0)
    assert bloat(samples, "table", "bloated", "pgstattuple") is None
    assert bloat(samples, "table", "bloated", "estimate") is not None
    budget = {"method": "pgstattuple", "reason": "time_budget", "datname": planted}
    assert value(samples, "pg_bloat_tables_unmeasured", **budget) == 2
    assert value(samples, "pg_bloat_indexes_unmeasured", **budget) == 2
    # pgstatindex reads an index whole: above the cap, not read. pgstattuple_approx skips the
    # pages the visibility map marks all-visible, which after VACUUM is all of them: read.
    samples = collect(dsn, planted, "bloat", min_bytes=MIN_BYTES, scan_max_bytes=MIN_BYTES)
    too_large = {"method": "pgstattuple", "reason": "too_large", "datname": planted}
    assert value(samples, "pg_bloat_indexes_unmeasured", **too_large) == 2
    assert bloat(samples, "index", "bloated_pkey", "pgstattuple") is None
    assert value(samples, "pg_bloat_tables_unmeasured", **too_large) is None
    assert bloat(samples, "table", "bloated", "pgstattuple") is not None


def test_locked_table_is_skipped_not_waited_for(postgres: LocalPostgres, planted: str) -> None:
    dsn = postgres.dsn(planted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE bloated IN ACCESS EXCLUSIVE MODE")
        samples = collect(dsn, planted, "bloat", min_bytes=MIN_BYTES)
        locker.rollback()
    locked = {"method": "pgstattuple", "reason": "locked", "datname": planted}
    assert value(samples, "pg_bloat_tables_unmeasured", **locked) == 1
    assert value(samples, "pg_bloat_indexes_unmeasured", **locked) == 1
    assert bloat(samples, "table", "bloated", "pgstattuple") is None
    healthy = bloat(samples, "table", "healthy", "pgstattuple")
    assert healthy is not None and healthy < 0.1
    # The estimate reads only catalogs and statistics, which the lock does not block.
    assert bloat(samples, "table", "bloated", "estimate") is not None


def test_a_table_grown_since_the_catalog_counted_it_is_still_considered(
    postgres: LocalPostgres, database: str
) -> None:
    """Relations are sized (which stats their files) only when the catalog's page counts say
    they may reach min_bytes; one counted small and grown by updates since, with no VACUUM or
    ANALYZE to count again, must still be considered, not silently left out."""
    dsn = postgres.dsn(database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE grown (id bigint PRIMARY KEY, payload text)"
            " WITH (autovacuum_enabled = false)"
        )
        conn.execute("INSERT INTO grown SELECT i, md5(i::text) FROM generate_series(1, 2000) i")
        conn.execute("ANALYZE grown")
    with psycopg.connect(dsn, autocommit=True) as conn:
        pages = conn.execute("SELECT relpages FROM pg_class WHERE relname = 'grown'").fetchone()
        assert pages is not None and pages[0] * 8192 * 4 < MIN_BYTES
        for _ in range(20):  # every row rewritten: 20 dead versions of each, no VACUUM
            conn.execute("UPDATE grown SET payload = payload || ''")
        size = conn.execute("SELECT pg_relation_size('grown')").fetchone()
        assert size is not None and size[0] > MIN_BYTES
        wait_for(lambda: table_stats(conn, "grown")[1] >= 20 * 2000, what="updates of grown")
    samples = collect(dsn, database, "bloat", min_bytes=MIN_BYTES)
    assert value(samples, "pg_bloat_tables_unmeasured", method="estimate") == 1
    assert (
        value(samples, "pg_bloat_tables_unmeasured", method="estimate", reason="stale_statistics")
        == 1
    )
