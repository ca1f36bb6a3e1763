"""pg_stat_statements: the costliest statements, capped without churn, and the opt-in text.

These tests rank statements across the whole server, so they run on a server of their own whose
statement statistics each test resets: nothing else runs statements there.
"""

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import CollectorJob, ProbeJob
from exporter.demo.embedded import LocalPostgres
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.targets import TargetRegistry
from support import Samples, exporter_config, names, parse_exposition, value

_counter = itertools.count()


class OneCollector:
    """One collector run on demand against one target, by one job that keeps its sticky
    selections."""

    def __init__(self, dsn: str, name: str, **override: Any) -> None:
        overrides = {name: {"interval": "1m", "timeout": "10s", **override}}
        config = exporter_config(dsn, collectors=overrides)
        collector = next(c for c in config.catalogue if c.name == name)
        self.store = Store(self_metrics=self_metrics)
        self.registry = TargetRegistry()
        self.target = self.registry.add(config.targets[0])
        self.probe = ProbeJob(self.target, self.store)
        self.job = CollectorJob(self.target, collector, self.store, max_age_intervals=60)

    def run(self) -> Samples:
        self.probe()
        self.job()
        return parse_exposition(self.store.snapshot().body.decode())

    def close(self) -> None:
        self.registry.close()


def collect(dsn: str, name: str, **override: Any) -> Samples:
    one = OneCollector(dsn, name, **override)
    try:
        return one.run()
    finally:
        one.close()


def published(samples: Samples, name: str = "pg_statements_calls_total") -> set[str]:
    """The queryids with a series of this metric."""
    return {dict(labels)["queryid"] for n, labels in samples if n == name}


def reason(samples: Samples, collector: str) -> str | None:
    found = [
        dict(labels)["reason"]
        for (n, labels), v in samples.items()
        if n == "pg_exporter_collector_available" and ("collector", collector) in labels and v == 0
    ]
    return found[0] if found else None


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgres]:
    pg = LocalPostgres(
        settings={"track_io_timing": "on", "pg_stat_statements.track_planning": "on"}
    )
    pg.start()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE ROLE stmt_app LOGIN")
        conn.execute("CREATE ROLE stmt_monitor LOGIN IN ROLE pg_monitor")
        conn.execute("CREATE ROLE stmt_stats LOGIN IN ROLE pg_read_all_stats")
        conn.execute("CREATE ROLE stmt_nobody LOGIN")
    yield pg
    pg.cleanup()


@pytest.fixture
def app_db(server: LocalPostgres) -> Iterator[str]:
    """A fresh database, created before the statistics are reset so its creation does not rank."""
    name = f"app_{next(_counter)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute("SELECT pg_stat_statements_reset()")
    yield name
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def run_in(server: LocalPostgres, database: str, *statements: str, user: str = "postgres") -> None:
    with psycopg.connect(server.dsn(database, user=user), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def queryid(server: LocalPostgres, database: str, normalised: str) -> str:
    """The queryid pg_stat_statements gave a statement, found by its normalised text."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT queryid FROM pg_stat_statements s JOIN pg_database d"
            " ON d.oid = s.dbid WHERE d.datname = %s AND s.query = %s",
            (database, normalised),
        ).fetchall()
    assert len(rows) == 1, f"{normalised!r} in {database}: {rows}"
    return str(rows[0][0])


def test_slow_statement_ranks_above_fast_ones(server: LocalPostgres, app_db: str) -> None:
    run_in(server, app_db, *["SELECT pg_sleep(0.2)"] * 3, *["SELECT 1"] * 50)
    slow = queryid(server, app_db, "SELECT pg_sleep($1)")
    fast = queryid(server, app_db, "SELECT $1")

    # One statement per ranking: the slow one leads by total and mean time, the fast one by calls.
    samples = collect(server.dsn(), "statements", params={"max_statements": 1})
    assert published(samples) == {slow, fast}
    labels = {"datname": app_db, "user": "postgres"}
    assert value(samples, "pg_statements_calls_total", queryid=slow, **labels) == 3
    slow_mean = value(samples, "pg_statements_mean_exec_time_seconds", queryid=slow, **labels)
    assert slow_mean is not None and slow_mean >= 0.2
    slow_total = value(samples, "pg_statements_exec_time_seconds_total", queryid=slow)
    assert slow_total is not None and slow_total >= 0.6
    fast_mean = value(samples, "pg_statements_mean_exec_time_seconds", queryid=fast)
    assert fast_mean is not None and fast_mean < slow_mean
    assert value(samples, "pg_statements_calls_total", queryid=fast) == 50
    assert value(samples, "pg_statements_rows_total", queryid=fast) == 50
    # pg_stat_statements.track_planning is on for this server.
    assert value(samples, "pg_statements_plan_time_seconds_total", queryid=slow) is not None
    assert value(samples, "pg_exporter_collector_up", collector="statements") == 1


def test_io_and_temp_files(server: LocalPostgres, app_db: str) -> None:
    spill = "SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s"
    run_in(server, app_db, "SET work_mem = '64kB'", spill, "SELECT pg_sleep(0.01)")
    spilled = queryid(server, app_db, spill.replace("1, 200000", "$1, $2"))
    in_memory = queryid(server, app_db, "SELECT pg_sleep($1)")

    samples = collect(server.dsn(), "statements")
    written = value(samples, "pg_statements_temp_blks_written_total", queryid=spilled)
    assert written is not None and written > 0
    assert value(samples, "pg_statements_temp_blks_written_total", queryid=in_memory) == 0
    # track_io_timing is on: data file I/O time is published (temp file I/O time from 15 on).
    assert value(samples, "pg_statements_blk_read_time_seconds_total", queryid=spilled) is not None
    temp_time = value(samples, "pg_statements_temp_blk_write_time_seconds_total", queryid=spilled)
    if server.version_num() >= 150000:
        assert temp_time is not None and temp_time > 0
    else:
        assert temp_time is None


def test_series_stay_bounded_and_totals_add_up(server: LocalPostgres, app_db: str) -> None:
    # 300 distinct statements (a different number of columns each); the first five busier.
    statements = ["SELECT " + ", ".join(["1"] * k) for k in range(1, 301)]
    run_in(
        server,
        app_db,
        *statements,
        *[s for k, s in enumerate(statements[:5]) for _ in range(20 - k)],
    )
    busiest = {
        queryid(server, app_db, "SELECT " + ", ".join([f"${i}" for i in range(1, k + 1)]))
        for k in range(1, 6)
    }

    samples = collect(server.dsn(), "statements", params={"max_statements": 5})
    chosen = published(samples)
    assert busiest <= chosen
    assert len(chosen) <= 3 * 5  # top 5 by total time, by mean time and by calls
    series = value(samples, "pg_exporter_collector_series", collector="statements")
    assert series is not None and series <= 3 * 5 * 13 + 20

    # The totals count every statement of the database, published or not.
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(calls), count(*) FROM pg_stat_statements s JOIN pg_database d"
            " ON d.oid = s.dbid WHERE d.datname = %s",
            (app_db,),
        ).fetchone()
    assert row is not None
    calls, count = row
    assert count >= 300
    assert value(samples, "pg_statements_all_calls_total", datname=app_db) == calls
    tracked = value(samples, "pg_statements_tracked")
    assert tracked is not None and tracked >= 300
    assert value(samples, "pg_statements_max") == 5000
    if server.version_num() >= 140000:
        assert value(samples, "pg_statements_dealloc_total") == 0
        assert value(samples, "pg_statements_stats_reset_timestamp_seconds") is not None
    else:
        assert "pg_statements_dealloc_total" not in names(samples)


def test_selection_is_sticky(server: LocalPostgres, app_db: str) -> None:
    """A statement that drops just below the cap keeps its series; a fresh start drops it."""
    slow = ["SELECT pg_sleep(0.1)", "SELECT pg_sleep(0.1), 1"]  # lead by total and mean time
    a, b, c = "SELECT 1, 1", "SELECT 1, 1, 1", "SELECT 1, 1, 1, 1"
    run_in(server, app_db, *slow, *[a] * 30, *[b] * 20, *[c] * 10)
    ids = {
        s: queryid(server, app_db, text)
        for s, text in (
            ("a", "SELECT $1, $2"),
            ("b", "SELECT $1, $2, $3"),
            ("c", "SELECT $1, $2, $3, $4"),
        )
    }

    one = OneCollector(server.dsn(), "statements", params={"max_statements": 2})
    try:
        first = published(one.run())
        assert {ids["a"], ids["b"]} <= first
        assert ids["c"] not in first
        run_in(server, app_db, *[c] * 15)  # c (25 calls) overtakes b (20): b is third by calls
        second = published(one.run())
        assert {ids["a"], ids["b"], ids["c"]} <= second
    finally:
        one.close()
    fresh = published(collect(server.dsn(), "statements", params={"max_statements": 2}))
    assert ids["b"] not in fresh
    assert {ids["a"], ids["c"]} <= fresh


def test_statement_text_is_opt_in_collapsed_and_truncated(
    server: LocalPostgres, app_db: str
) -> None:
    assert builtin_specs()["statement_text"].enabled is False
    long_alias = "a_very_long_column_alias_" * 4
    run_in(
        server,
        app_db,
        "SELECT\n    pg_sleep(0.05)\n\t",
        f"SELECT 1 AS {long_alias}, 2 AS b",
        "ALTER ROLE stmt_app PASSWORD 'hunter2'",
    )
    slow = queryid(server, app_db, "SELECT\n    pg_sleep($1)")

    samples = collect(server.dsn(), "statement_text", enabled=True, params={"query_length": 40})
    texts = {
        dict(labels)["queryid"]: dict(labels)["query"]
        for (n, labels), v in samples.items()
        if n == "pg_statement_text_info" and v == 1
    }
    assert texts[slow] == "SELECT pg_sleep($1)"
    truncated = [t for t in texts.values() if t.startswith("SELECT $1 AS a_very")]
    assert truncated == [f"SELECT $1 AS {long_alias}"[:40]]
    assert any(t.startswith("ALTER ROLE stmt_app PASSWORD") for t in texts.values())
    assert "hunter2" not in repr(samples)
    assert all(len(t) <= 40 for t in texts.values())


def test_unavailable_without_preload() -> None:
    with LocalPostgres(preload_libraries=()) as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")  # created, but not loaded
            conn.execute("CREATE ROLE stats_only LOGIN IN ROLE pg_read_all_stats")
        samples = collect(pg.dsn(), "statements")
        assert reason(samples, "statements") == "pg_stat_statements not in shared_preload_libraries"
        assert value(samples, "pg_exporter_collector_errors_total", collector="statements") == 0
        assert not {n for n in names(samples) if n.startswith("pg_statements_")}
        # A role that may not read shared_preload_libraries finds out from the query itself.
        samples = collect(pg.dsn(user="stats_only"), "statements")
        found = reason(samples, "statements")
        assert found is not None and "shared_preload_libraries" in found
        assert value(samples, "pg_exporter_collector_errors_total", collector="statements") == 0


def test_unavailable_where_the_extension_is_not_created(server: LocalPostgres, app_db: str) -> None:
    samples = collect(server.dsn(app_db), "statements")
    assert reason(samples, "statements") == (
        "extension pg_stat_statements not installed (CREATE EXTENSION)"
    )
    assert not {n for n in names(samples) if n.startswith("pg_statements_")}


def test_pg_monitor_sees_every_role(server: LocalPostgres, app_db: str) -> None:
    run_in(server, app_db, "SELECT pg_sleep(0.05)", user="stmt_app")
    slow = queryid(server, app_db, "SELECT pg_sleep($1)")

    samples = collect(server.dsn(user="stmt_monitor"), "statements")
    mean = value(samples, "pg_statements_mean_exec_time_seconds", queryid=slow, user="stmt_app")
    assert mean is not None and mean >= 0.05
    text = collect(server.dsn(user="stmt_monitor"), "statement_text", enabled=True)
    assert value(text, "pg_statement_text_info", queryid=slow, query="SELECT pg_sleep($1)") == 1

    # Without pg_read_all_stats other roles' statements have no queryid: unavailable, not partial.
    samples = collect(server.dsn(user="stmt_nobody"), "statements")
    assert reason(samples, "statements") == (
        "role is not a member of pg_read_all_stats: GRANT pg_monitor TO stmt_nobody"
    )


def test_statement_text_masks_secrets_in_every_quoting_form(
    server: LocalPostgres, app_db: str
) -> None:
    """Utility statements keep their literals in pg_stat_statements: each password, however
    it is quoted, must not reach a label, whole or in part."""
    mark = "Hx4"  # in every secret: a leak of any part of one shows it
    statements = [
        f"ALTER ROLE stmt_app PASSWORD 'q{mark}''doubled{mark}'",
        f"ALTER ROLE stmt_app PASSWORD E'e{mark}\\'escaped{mark}'",
        f"ALTER ROLE stmt_app PASSWORD E'e{mark}''doubled{mark}'",
        f"ALTER ROLE stmt_app PASSWORD $$d{mark}'dollar{mark}$$",
        f"ALTER ROLE stmt_app PASSWORD $pw$t{mark}$$tag{mark}$pw$",
        f"ALTER ROLE stmt_app PASSWORD U&'u{mark}\\0027unicode{mark}'",
        f"ALTER ROLE stmt_app PASSWORD 'c{mark}'\n   'continued{mark}'",
        f"ALTER ROLE stmt_app ENCRYPTED PASSWORD 'v{mark}valid{mark}' VALID UNTIL 'infinity'",
    ]
    run_in(server, app_db, *statements)
    samples = collect(server.dsn(), "statement_text", enabled=True)
    texts = [
        dict(labels)["query"]
        for (n, labels), v in samples.items()
        if n == "pg_statement_text_info" and v == 1
    ]
    altered = [t for t in texts if t.startswith("ALTER ROLE stmt_app")]
    assert len(altered) == len(statements), texts
    assert all(mark not in t for t in texts), [t for t in texts if mark in t]
    assert "ALTER ROLE stmt_app PASSWORD '****'" in altered
