"""Tables, indexes, cache hits and index health: each problem planted in a fresh database.

Every test plants a problem next to a healthy neighbour and asserts the exporter flags exactly
the problem. Statistics reach the views asynchronously (a backend reports them when it goes
idle or exits; before PostgreSQL 15 a separate process receives them), so each test first
waits, with a deadline, until pg_stat_* show the planted workload, then collects once.
"""

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import Samples, names, parse_exposition, value, wait_for

MINE = ("statio", "tables", "indexes", "index_health")


def collect(
    postgres: LocalPostgres,
    database: str,
    *,
    user: str = "postgres",
    params: dict[str, dict[str, Any]] | None = None,
    also: tuple[str, ...] = (),
) -> Samples:
    """Run this file's collectors once in `database` only, or with the databases `also` (the
    other collectors are switched off)."""
    collectors: dict[str, Any] = {name: {"enabled": False} for name in builtin_specs()}
    for name in MINE:
        collectors[name] = {"params": (params or {}).get(name, {})}
    config = parse_config(
        {
            "targets": [
                {
                    "name": "pg",
                    "dsn": postgres.dsn(database, user=user),
                    "connect_timeout": "5s",
                    "databases": {"include": [re.escape(d) for d in (database, *also)]},
                }
            ],
            "collectors": collectors,
        }
    )
    samples = parse_exposition(run_once(config).body.decode())
    for name in MINE:
        up = value(samples, "pg_exporter_collector_up", collector=name)
        available = [
            dict(labels)["reason"]
            for (metric, labels), v in samples.items()
            if metric == "pg_exporter_collector_available" and ("collector", name) in labels
        ]
        assert up == 1, f"collector {name} did not run: {available}"
    return samples


def run(postgres: LocalPostgres, database: str, *statements: str) -> None:
    """Run statements on a connection of their own, closed at once so its statistics flush."""
    with psycopg.connect(postgres.dsn(database), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def query(postgres: LocalPostgres, database: str, sql: str) -> Any:
    with psycopg.connect(postgres.dsn(database), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def wait_stats(postgres: LocalPostgres, database: str, condition: str, what: str) -> None:
    """Wait until `condition` (SQL on pg_stat_* views) holds: the statistics have arrived."""
    # A new connection each time: a session caches the statistics it has read.
    wait_for(lambda: query(postgres, database, f"SELECT {condition}"), what=what)


def labelled(
    samples: Samples, metric: str, database: str, *keys: str
) -> dict[tuple[str, ...], float]:
    """The samples of `metric` in `database`, keyed by the values of the labels `keys`."""
    found = {}
    for (name, labels), v in samples.items():
        as_dict = dict(labels)
        if name == metric and as_dict.get("datname") == database:
            found[tuple(as_dict[k] for k in keys)] = v
    return found


def flagged(samples: Samples, metric: str, database: str, *keys: str) -> set[tuple[str, ...]]:
    return set(labelled(samples, metric, database, *keys))


def problems(samples: Samples, database: str) -> dict[str, float]:
    return {
        check: v
        for (check,), v in labelled(samples, "pg_index_health_problems", database, "check").items()
    }


def test_unused_index_flagged_and_kept_when_capped(postgres: LocalPostgres, database: str) -> None:
    run(
        postgres,
        database,
        "SELECT pg_stat_reset()",
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "INSERT INTO parent SELECT g FROM generate_series(1, 100) g",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, parent_id int REFERENCES parent,"
        " note text)",
        "INSERT INTO orders SELECT g, g % 500, g % 100 + 1, 'note number ' || g"
        " FROM generate_series(1, 20000) g",
        # Used by the lookups below, and the largest index.
        "CREATE INDEX orders_customer_idx ON orders (customer_id, note)",
        "CREATE INDEX orders_note_idx ON orders (note)",  # never used: the problem
        "CREATE INDEX orders_parent_idx ON orders (parent_id)",  # unused, but backs the FK
        "CREATE TABLE tiny (id int, val int)",
        "INSERT INTO tiny SELECT g, g FROM generate_series(1, 10) g",
        "CREATE INDEX tiny_val_idx ON tiny (val)",  # unused, but below the size threshold
    )
    started = time.time()
    lookups = [f"SELECT count(*) FROM orders WHERE customer_id = {i}" for i in range(10)]
    run(postgres, database, "SET enable_seqscan = off", "SET enable_bitmapscan = off", *lookups)
    wait_stats(
        postgres,
        database,
        "(SELECT idx_scan >= 10 FROM pg_stat_user_indexes"
        " WHERE indexrelname = 'orders_customer_idx')",
        "10 scans of orders_customer_idx",
    )
    threshold = 100_000
    assert query(postgres, database, "SELECT pg_relation_size('tiny_val_idx')") < threshold
    for index in ("orders_note_idx", "orders_parent_idx"):
        assert query(postgres, database, f"SELECT pg_relation_size('{index}')") > threshold

    samples = collect(
        postgres,
        database,
        params={
            "index_health": {"unused_min_bytes": threshold},
            # One index per ranking: the unused one is published only because it is flagged.
            "indexes": {"unused_min_bytes": threshold, "max_indexes": 1},
        },
    )
    unused = labelled(
        samples, "pg_index_health_unused_index_size_bytes", database, "relname", "indexrelname"
    )
    note_size = query(postgres, database, "SELECT pg_relation_size('orders_note_idx')")
    assert unused == {("orders", "orders_note_idx"): note_size}
    assert problems(samples, database)["unused"] == 1
    assert (
        value(samples, "pg_index_health_problem_size_bytes", datname=database, check="unused")
        == note_size
    )

    # Top 1 by size, top 1 by scans (the foreign key checks of the inserts), and the unused
    # index, kept because it is flagged; tiny_val_idx is neither.
    sizes = labelled(samples, "pg_indexes_size_bytes", database, "indexrelname")
    assert set(sizes) == {("orders_customer_idx",), ("parent_pkey",), ("orders_note_idx",)}
    scans = labelled(samples, "pg_indexes_idx_scan_total", database, "indexrelname")
    assert scans[("orders_note_idx",)] == 0
    assert value(samples, "pg_indexes_all_indexes", datname=database) == 6
    assert value(samples, "pg_indexes_all_idx_scan_total", datname=database) == query(
        postgres, database, "SELECT sum(idx_scan) FROM pg_stat_user_indexes"
    )
    reset = value(samples, "pg_indexes_stats_reset_timestamp_seconds", datname=database)
    assert reset is not None and started - 60 < reset <= time.time()
    if postgres.version_num() >= 160000:
        last_scans = labelled(
            samples, "pg_indexes_last_scan_timestamp_seconds", database, "indexrelname"
        )
        assert ("orders_note_idx",) not in last_scans  # never scanned: no sample, not 0
        assert started - 60 < last_scans[("orders_customer_idx",)] <= time.time()
    else:
        assert "pg_indexes_last_scan_timestamp_seconds" not in names(samples)


def test_an_unused_index_grown_past_what_the_catalog_counted_is_still_flagged(
    postgres: LocalPostgres, database: str
) -> None:
    """Indexes are sized, and judged unused, only when the catalog's page counts say they
    may be large enough; an index built small whose table has grown since (no VACUUM or
    ANALYZE has counted again) must not slip through."""
    run(
        postgres,
        database,
        "CREATE TABLE grown (id int, note text) WITH (autovacuum_enabled = false)",
        "INSERT INTO grown SELECT g, 'note number ' || g FROM generate_series(1, 10) g",
        "CREATE INDEX grown_note_idx ON grown (note)",  # counted at 10 rows: 2 pages
        "INSERT INTO grown SELECT g, 'note number ' || g FROM generate_series(11, 20000) g",
    )
    threshold = 100_000
    assert (
        query(postgres, database, "SELECT relpages FROM pg_class WHERE relname = 'grown_note_idx'")
        * 8192
        * 4
        < threshold
    )
    size = query(postgres, database, "SELECT pg_relation_size('grown_note_idx')")
    assert size > threshold
    wait_stats(
        postgres,
        database,
        "(SELECT n_live_tup = 20000 FROM pg_stat_user_tables WHERE relname = 'grown')",
        "the inserts counted",
    )
    samples = collect(
        postgres,
        database,
        params={
            "index_health": {"unused_min_bytes": threshold},
            "indexes": {"unused_min_bytes": threshold},
        },
    )
    unused = labelled(
        samples, "pg_index_health_unused_index_size_bytes", database, "relname", "indexrelname"
    )
    assert unused == {("grown", "grown_note_idx"): size}
    sizes = labelled(samples, "pg_indexes_size_bytes", database, "indexrelname")
    assert sizes[("grown_note_idx",)] == size


def test_duplicate_and_redundant_indexes(postgres: LocalPostgres, database: str) -> None:
    run(
        postgres,
        database,
        "CREATE TABLE t (a int UNIQUE, b int, c int, d int, e int)",
        "INSERT INTO t SELECT g, g, g, g, g FROM generate_series(1, 1000) g",
        "CREATE INDEX t_a_plain ON t (a)",  # duplicates the unique constraint's index
        "CREATE INDEX t_b_first ON t (b)",
        "CREATE INDEX t_b_again ON t (b)",  # duplicates t_b_first
        "CREATE INDEX t_b_desc ON t (b DESC)",  # a different ordering: not a duplicate
        "CREATE INDEX t_b_partial ON t (b) WHERE b > 10",  # a predicate: not a duplicate
        "CREATE INDEX t_c ON t (c)",  # the leading column of t_c_d: redundant
        "CREATE INDEX t_c_d ON t (c, d)",
        "CREATE UNIQUE INDEX t_d_unique ON t (d)",  # leads nothing; unique anyway
        "CREATE INDEX t_d_e ON t (d, e)",  # t_d_unique enforces uniqueness: not redundant
        "CREATE INDEX t_e_hash ON t USING hash (e)",
        "CREATE INDEX t_e_hash_again ON t USING hash (e)",  # a hash duplicate
    )
    samples = collect(postgres, database)
    duplicates = labelled(
        samples,
        "pg_index_health_duplicate_index_size_bytes",
        database,
        "relname",
        "indexrelname",
        "duplicate_of",
    )
    assert set(duplicates) == {
        ("t", "t_a_plain", "t_a_key"),
        ("t", "t_b_again", "t_b_first"),
        ("t", "t_e_hash_again", "t_e_hash"),
    }
    assert duplicates[("t", "t_b_again", "t_b_first")] == query(
        postgres, database, "SELECT pg_relation_size('t_b_again')"
    )
    redundant = flagged(
        samples,
        "pg_index_health_redundant_index_size_bytes",
        database,
        "indexrelname",
        "covered_by",
    )
    assert redundant == {("t_c", "t_c_d")}
    counts = problems(samples, database)
    assert counts["duplicate"] == 3 and counts["redundant"] == 1
    # Flagged indexes stay in the per-index series: twins are kept whatever the cap.
    sizes = flagged(samples, "pg_indexes_size_bytes", database, "indexrelname")
    assert {("t_b_first",), ("t_b_again",), ("t_a_plain",), ("t_a_key",)} <= sizes


@pytest.fixture
def index_build_in_progress(postgres: LocalPostgres, database: str) -> Iterator[None]:
    """A CREATE INDEX CONCURRENTLY waiting for a writer's open transaction: invalid until done."""
    run(postgres, database, "CREATE TABLE building (a int)")
    writer = psycopg.connect(postgres.dsn(database))
    writer.execute("INSERT INTO building VALUES (1)")  # holds its lock until commit
    failure: list[BaseException] = []

    def build() -> None:
        try:
            run(postgres, database, "CREATE INDEX CONCURRENTLY building_idx ON building (a)")
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    builder = threading.Thread(target=build)
    builder.start()
    try:
        wait_for(
            lambda: query(
                postgres,
                database,
                "SELECT count(*) FROM pg_stat_progress_create_index p"
                " JOIN pg_index i ON i.indexrelid = p.index_relid AND NOT i.indisvalid",
            ),
            what="the concurrent index build to wait for the writer",
        )
        yield
    finally:
        writer.commit()
        writer.close()
        builder.join(timeout=30)
    assert not failure, failure
    assert query(
        postgres,
        database,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'building_idx'::regclass",
    )


def test_invalid_index(
    postgres: LocalPostgres,
    database: str,
    index_build_in_progress: None,
    login_role: Callable[..., str],
) -> None:
    run(
        postgres,
        database,
        "CREATE TABLE t (a int, b int)",
        "INSERT INTO t SELECT g % 10, g FROM generate_series(1, 1000) g",
        "CREATE INDEX t_b ON t (b)",
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(postgres, database, "CREATE UNIQUE INDEX CONCURRENTLY t_a_unique ON t (a)")
    samples = collect(postgres, database)
    invalid = labelled(
        samples, "pg_index_health_invalid_index_size_bytes", database, "relname", "indexrelname"
    )
    # The failed build is flagged; the valid index and the build still running are not.
    assert set(invalid) == {("t", "t_a_unique")}
    assert problems(samples, database)["invalid"] == 1
    # The invalid index is among the per-index series, whatever the cap.
    assert ("t_a_unique",) in flagged(samples, "pg_indexes_size_bytes", database, "indexrelname")
    # A role without pg_read_all_stats does not see which table a build is on: the build's
    # locks tell instead, so it gets the same answer.
    plain = collect(postgres, database, user=login_role("plain"))
    assert (
        labelled(
            plain, "pg_index_health_invalid_index_size_bytes", database, "relname", "indexrelname"
        )
        == invalid
    )


def test_locked_table_gets_no_size_and_blocks_nothing(
    postgres: LocalPostgres, database: str
) -> None:
    run(
        postgres,
        database,
        "CREATE TABLE locked (id int PRIMARY KEY, note text)",
        "CREATE INDEX locked_note ON locked (note)",
        "CREATE INDEX locked_note_again ON locked (note)",
        "CREATE TABLE free (id int PRIMARY KEY, note text)",
    )
    with psycopg.connect(postgres.dsn(database)) as ddl:
        ddl.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")  # as VACUUM FULL would
        samples = collect(postgres, database)  # every collector ran (asserted by collect)
    sizes = labelled(samples, "pg_tables_size_bytes", database, "relname")
    assert set(sizes) == {("free",)}
    # Index health still finds the duplicate; only sizes, and counts that need them, are unknown.
    assert problems(samples, database)["duplicate"] == 1
    assert "unused" not in problems(samples, database)
    assert (
        value(samples, "pg_index_health_problem_size_bytes", datname=database, check="duplicate")
        is None
    )
    index_sizes = labelled(samples, "pg_indexes_size_bytes", database, "indexrelname")
    assert set(index_sizes) == {("free_pkey",)}
    # A total that would be too small is left out rather than published.
    assert value(samples, "pg_tables_all_size_bytes", datname=database) is None
    assert value(samples, "pg_tables_all_tables", datname=database) == 2
    live = labelled(samples, "pg_tables_n_live_tup", database, "relname")
    assert set(live) == {("free",), ("locked",)}  # statistics need no lock


def test_foreign_key_without_index(postgres: LocalPostgres, database: str) -> None:
    run(
        postgres,
        database,
        "CREATE TABLE parent (id int PRIMARY KEY, code int, UNIQUE (id, code))",
        "CREATE TABLE child_bad (id int, parent_id int CONSTRAINT child_bad_parent_fk"
        " REFERENCES parent)",
        "CREATE TABLE child_good (id int, parent_id int CONSTRAINT child_good_parent_fk"
        " REFERENCES parent)",
        "CREATE INDEX child_good_parent_idx ON child_good (parent_id)",
        # Two columns, indexed in another order: the index still serves the lookups.
        "CREATE TABLE child_pair (id int, pid int, pcode int, CONSTRAINT child_pair_fk"
        " FOREIGN KEY (pid, pcode) REFERENCES parent (id, code))",
        "CREATE INDEX child_pair_idx ON child_pair (pcode, pid, id)",
        # Indexed only on the second column of the key: no index leads with it.
        "CREATE TABLE child_half (id int, pid int, pcode int, CONSTRAINT child_half_fk"
        " FOREIGN KEY (pid, pcode) REFERENCES parent (id, code))",
        "CREATE INDEX child_half_idx ON child_half (pcode)",
        # A partial index does not serve every lookup.
        "CREATE TABLE child_partial (id int, parent_id int CONSTRAINT child_partial_fk"
        " REFERENCES parent)",
        "CREATE INDEX child_partial_idx ON child_partial (parent_id) WHERE parent_id > 0",
    )
    samples = collect(postgres, database, params={"index_health": {"unused_min_bytes": 0}})
    unindexed = labelled(
        samples, "pg_index_health_unindexed_foreign_key", database, "relname", "conname"
    )
    assert unindexed == {
        ("child_bad", "child_bad_parent_fk"): 1,
        ("child_half", "child_half_fk"): 1,
        ("child_partial", "child_partial_fk"): 1,
    }
    assert problems(samples, database)["unindexed_fk"] == 3
    # Even with no size threshold, an index that serves a foreign key is never "unused".
    unused = flagged(samples, "pg_index_health_unused_index_size_bytes", database, "indexrelname")
    assert unused == {("child_half_idx",), ("child_partial_idx",)}


def test_missing_index_candidate(postgres: LocalPostgres, database: str) -> None:
    rows = 20_000
    run(
        postgres,
        database,
        "CREATE TABLE scanned (id int, v int)",
        f"INSERT INTO scanned SELECT g, g FROM generate_series(1, {rows}) g",
        "CREATE TABLE looked_up (id int, v int)",
        f"INSERT INTO looked_up SELECT g, g % 100 FROM generate_series(1, {rows}) g",
        "CREATE INDEX looked_up_v ON looked_up (v)",
    )
    scans = [f"SELECT count(*) FROM scanned WHERE v = {i}" for i in range(5)]
    lookups = [f"SELECT count(*) FROM looked_up WHERE v = {i}" for i in range(5)]
    run(postgres, database, "SET enable_seqscan = off", "SET enable_bitmapscan = off", *lookups)
    run(postgres, database, "SET max_parallel_workers_per_gather = 0", *scans)
    wait_stats(
        postgres,
        database,
        "(SELECT seq_scan >= 5 FROM pg_stat_user_tables WHERE relname = 'scanned')"
        " AND (SELECT idx_tup_fetch >= 1000 FROM pg_stat_user_tables WHERE relname = 'looked_up')"
        f" AND (SELECT min(n_live_tup) = {rows} FROM pg_stat_user_tables)",
        "the scans counted",
    )
    params = {"missing_index_min_rows": 10_000, "missing_index_min_seq_scans": 5}
    samples = collect(postgres, database, params={"index_health": params, "tables": params})
    missing = labelled(
        samples, "pg_index_health_missing_index_seq_tup_read_total", database, "relname"
    )
    seq_tup_read = query(
        postgres, database, "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'scanned'"
    )
    assert seq_tup_read >= 5 * rows
    assert missing == {("scanned",): seq_tup_read}
    assert problems(samples, database)["missing_index"] == 1
    read = labelled(samples, "pg_tables_seq_tup_read_total", database, "relname")
    assert read[("scanned",)] == seq_tup_read
    fetched = labelled(samples, "pg_tables_idx_tup_fetch_total", database, "relname")
    assert fetched[("looked_up",)] >= 1000
    assert ("scanned",) not in fetched  # a table without indexes has no index statistics


def test_dead_tuples_flagged_table_kept_when_capped(postgres: LocalPostgres, database: str) -> None:
    run(
        postgres,
        database,
        # The largest, busiest table with the most dead tuples, but few relative to its size.
        "CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = false)",
        "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g",
        "DELETE FROM big WHERE id <= 5000",
        # Three quarters dead: the problem.
        "CREATE TABLE churned (id int) WITH (autovacuum_enabled = false)",
        "INSERT INTO churned SELECT g FROM generate_series(1, 2000) g",
        "DELETE FROM churned WHERE id <= 1500",
        # Healthy and small.
        "CREATE TABLE calm (id int) WITH (autovacuum_enabled = false)",
        "INSERT INTO calm SELECT g FROM generate_series(1, 100) g",
        "VACUUM ANALYZE calm",
    )
    wait_stats(
        postgres,
        database,
        "(SELECT n_dead_tup = 1500 FROM pg_stat_user_tables WHERE relname = 'churned')"
        " AND (SELECT n_dead_tup = 5000 FROM pg_stat_user_tables WHERE relname = 'big')"
        " AND (SELECT vacuum_count = 1 FROM pg_stat_user_tables WHERE relname = 'calm')",
        "the deletes counted",
    )
    samples = collect(
        postgres,
        database,
        params={
            "tables": {
                "max_tables": 1,
                "dead_tuples_min": 1000,
                "dead_tuples_ratio": 0.2,
                "large_table_rows": 1_000_000,
            }
        },
    )
    dead = labelled(samples, "pg_tables_n_dead_tup", database, "relname")
    # big: top by every ranking; churned: flagged; calm: neither, so left out.
    assert dead == {("big",): 5000, ("churned",): 1500}
    live = labelled(samples, "pg_tables_n_live_tup", database, "relname")
    assert live == {("big",): 95000, ("churned",): 500}
    # The per-database totals count every table, published or not.
    assert value(samples, "pg_tables_all_tables", datname=database) == 3
    assert value(samples, "pg_tables_all_n_dead_tup", datname=database) == 6500
    assert value(samples, "pg_tables_all_n_live_tup", datname=database) == query(
        postgres, database, "SELECT sum(n_live_tup) FROM pg_stat_user_tables"
    )
    assert value(samples, "pg_tables_all_vacuums_total", datname=database) == 1
    all_size = query(
        postgres, database, "SELECT sum(pg_total_relation_size(relid)) FROM pg_stat_user_tables"
    )
    assert value(samples, "pg_tables_all_size_bytes", datname=database) == all_size
    # Sizes add up: heap + indexes + TOAST = total.
    parts = [
        labelled(samples, f"pg_tables_{part}_bytes", database, "relname")[("big",)]
        for part in ("heap_size", "indexes_size", "toast_size")
    ]
    total = labelled(samples, "pg_tables_size_bytes", database, "relname")[("big",)]
    assert sum(parts) == total == query(postgres, database, "SELECT pg_total_relation_size('big')")
    assert ("big",) not in labelled(
        samples, "pg_tables_last_vacuum_timestamp_seconds", database, "relname"
    )


def test_a_targets_databases_share_its_per_object_cap(
    postgres: LocalPostgres, database: str, other_database: str
) -> None:
    both = (database, other_database)
    for name in both:
        run(
            postgres,
            name,
            # First (lowest relid, so first where counts tie), largest, busiest, most dead.
            "CREATE TABLE big (id int) WITH (autovacuum_enabled = false)",
            "INSERT INTO big SELECT g FROM generate_series(1, 100000) g",
            "DELETE FROM big WHERE id <= 5000",
            *(f"CREATE TABLE small_{n} (id int)" for n in range(3)),
            *(f"INSERT INTO small_{n} VALUES (1)" for n in range(3)),
        )
    # Three quarters dead, flagged: kept whatever the share.
    run(
        postgres,
        database,
        "CREATE TABLE churned (id int) WITH (autovacuum_enabled = false)",
        "INSERT INTO churned SELECT g FROM generate_series(1, 2000) g",
        "DELETE FROM churned WHERE id <= 1500",
    )
    for name in both:
        wait_stats(
            postgres,
            name,
            "(SELECT n_dead_tup = 5000 FROM pg_stat_user_tables WHERE relname = 'big')"
            " AND (SELECT count(*) = 3 FROM pg_stat_user_tables"
            "      WHERE relname LIKE 'small%' AND n_tup_ins = 1)",
            "the inserts and deletes counted",
        )
    wait_stats(
        postgres,
        database,
        "(SELECT n_dead_tup = 1500 FROM pg_stat_user_tables WHERE relname = 'churned')",
        "churned's deletes counted",
    )
    flag = {"dead_tuples_min": 1000, "dead_tuples_ratio": 0.2}

    def published(samples: Samples, name: str) -> set[str]:
        return {r for (r,) in labelled(samples, "pg_tables_n_live_tup", name, "relname")}

    # Each database alone is under the cap: every table.
    roomy = collect(postgres, database, also=(other_database,), params={"tables": flag})
    assert published(roomy, database) == {"big", "churned", "small_0", "small_1", "small_2"}
    assert published(roomy, other_database) == {"big", "small_0", "small_1", "small_2"}
    # Two per ranking for the target: one each, the top of every ranking, plus the flagged.
    shared = collect(
        postgres,
        database,
        also=(other_database,),
        params={"tables": {**flag, "max_tables_per_target": 2}},
    )
    assert published(shared, database) == {"big", "churned"}
    assert published(shared, other_database) == {"big"}
    # The totals still count every table.
    assert value(shared, "pg_tables_all_tables", datname=other_database) == 4


def test_cache_hit_counters_move(postgres: LocalPostgres, database: str) -> None:
    run(
        postgres,
        database,
        "CREATE TABLE t (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = false)",
        "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g",
    )
    wait_stats(
        postgres,
        database,
        "(SELECT n_tup_ins = 10000 FROM pg_stat_user_tables WHERE relname = 't')",
        "the inserts counted",
    )

    def counters() -> dict[str, float]:
        samples = collect(postgres, database)
        found = {
            kind: value(samples, f"pg_statio_{kind}_total", datname=database)
            for kind in ("heap_blks_hit", "heap_blks_read", "idx_blks_hit", "idx_blks_read")
        }
        found["t_heap_blks_hit"] = value(
            samples, "pg_tables_heap_blks_hit_total", datname=database, relname="t"
        )
        return {k: v for k, v in found.items() if v is not None}

    before = counters()
    # Counted from here: index builds count as sequential scans before PostgreSQL 15.
    scans = query(postgres, database, "SELECT seq_scan || ',' || idx_scan FROM pg_stat_user_tables")
    seq_scans, idx_scans = (int(n) for n in scans.split(","))
    pages = query(postgres, database, "SELECT pg_relation_size('t') / 8192")
    assert pages > 10

    # A sequential scan reads every table block (from shared buffers: the insert put them there).
    run(postgres, database, "SET max_parallel_workers_per_gather = 0", "SELECT count(*) FROM t")
    wait_stats(
        postgres,
        database,
        f"(SELECT seq_scan > {seq_scans} FROM pg_stat_user_tables WHERE relname = 't')",
        "the sequential scan counted",
    )
    after_scan = counters()
    heap_blocks = (after_scan["heap_blks_hit"] + after_scan["heap_blks_read"]) - (
        before["heap_blks_hit"] + before["heap_blks_read"]
    )
    assert heap_blocks >= pages
    assert after_scan["heap_blks_hit"] > before["heap_blks_hit"]
    assert after_scan["t_heap_blks_hit"] > before["t_heap_blks_hit"]
    # No index scan: at most the planner's look at the primary key's metapage.
    assert after_scan["idx_blks_hit"] - before["idx_blks_hit"] <= 2

    # Index lookups touch index blocks: at least one per lookup.
    lookups = [f"SELECT pad FROM t WHERE id = {i}" for i in range(1, 21)]
    run(postgres, database, "SET enable_seqscan = off", "SET enable_bitmapscan = off", *lookups)
    wait_stats(
        postgres,
        database,
        f"(SELECT idx_scan >= {idx_scans + 20} FROM pg_stat_user_tables WHERE relname = 't')",
        "the index scans counted",
    )
    after_lookups = counters()
    assert after_lookups["idx_blks_hit"] - after_scan["idx_blks_hit"] >= 20


STATIO_KINDS = ("heap", "idx", "toast", "tidx")


def test_block_sums_are_pg_statio_user_tables_sums(postgres: LocalPostgres, database: str) -> None:
    """The collector sums each relation's counters itself (cheaper than the view at 10,000
    tables): the sums must be the view's, TOAST, several indexes and materialized views
    included, and the catalog's own tables left out."""
    run(
        postgres,
        database,
        "CREATE TABLE doc (id int PRIMARY KEY, k int, body text) WITH (autovacuum_enabled = false)",
        "CREATE INDEX ON doc (k)",
        "CREATE INDEX ON doc (k, id)",
        # Out of line: TOAST blocks and TOAST index blocks to count.
        "INSERT INTO doc SELECT g, g, (SELECT string_agg(md5(g::text || x::text), '')"
        " FROM generate_series(1, 200) x) FROM generate_series(1, 300) g",
        # No autovacuum here either: an ANALYZE of its own would move the counters between
        # the collector's reading and the view's.
        "CREATE MATERIALIZED VIEW doc_sizes WITH (autovacuum_enabled = false)"
        " AS SELECT id, length(body) AS n FROM doc",
        "CREATE INDEX ON doc_sizes (n)",
        "SELECT count(*) FROM doc_sizes WHERE n > 0",
        "SET enable_seqscan = off",
        "SELECT max(length(body)) FROM doc WHERE k < 100",
    )
    columns = ", ".join(
        f"sum({kind}_blks_{what})::bigint" for kind in STATIO_KINDS for what in ("hit", "read")
    )
    view_sums = f"(SELECT ARRAY[{columns}] FROM pg_statio_user_tables)::text"

    def settled() -> str | None:
        """The view's sums once the statistics have arrived and stopped moving."""
        first = query(postgres, database, f"SELECT {view_sums}")
        ready = query(
            postgres,
            database,
            "SELECT tidx_blks_hit > 0 FROM pg_statio_user_tables WHERE relname = 'doc'",
        )
        return (
            first if ready and query(postgres, database, f"SELECT {view_sums}") == first else None
        )

    expected = wait_for(settled, what="the TOAST index reads counted, and settled")
    samples = collect(postgres, database)
    found = [
        value(samples, f"pg_statio_{kind}_blks_{what}_total", datname=database)
        for kind in STATIO_KINDS
        for what in ("hit", "read")
    ]
    # The collector's own reads touch only catalogs, which neither side counts.
    assert "{" + ",".join(f"{n:.0f}" if n is not None else "-" for n in found) + "}" == expected
    assert query(postgres, database, f"SELECT {view_sums}") == expected


@pytest.fixture
def login_role(postgres: LocalPostgres) -> Iterator[Callable[..., str]]:
    """Make login roles (cluster-wide, so named per process), dropped when the test ends."""
    made: list[str] = []

    def make(name: str, *, member_of: str | None = None) -> str:
        role = f"{name}_{os.getpid()}"
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(
                f"CREATE ROLE {role} LOGIN" + (f" IN ROLE {member_of}" if member_of else "")
            )
        made.append(role)
        return role

    yield make
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for role in made:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_pg_monitor_role_sees_the_same(
    postgres: LocalPostgres, database: str, login_role: Callable[..., str]
) -> None:
    monitor_role = login_role("monitor", member_of="pg_monitor")
    run(
        postgres,
        database,
        "CREATE SCHEMA private",  # owned by postgres; the monitor has no USAGE on it
        "CREATE TABLE private.parent (id int PRIMARY KEY) WITH (autovacuum_enabled = false)",
        "INSERT INTO private.parent SELECT g FROM generate_series(1, 100) g",
        "CREATE TABLE private.child (id int, parent_id int REFERENCES private.parent, v int,"
        " w text) WITH (autovacuum_enabled = false)",
        "INSERT INTO private.child SELECT g, g % 100 + 1, g, 'w' || g"
        " FROM generate_series(1, 20000) g",
        "CREATE INDEX child_v ON private.child (v)",
        "CREATE INDEX child_v_again ON private.child (v)",
        "CREATE INDEX child_w ON private.child (w)",
        # No index at all, and read by sequential scans only (index builds count as some).
        "CREATE TABLE private.log (id int, note text) WITH (autovacuum_enabled = false)",
        "INSERT INTO private.log SELECT g, 'n' || g FROM generate_series(1, 20000) g",
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(
            postgres,
            database,
            "CREATE UNIQUE INDEX CONCURRENTLY child_dup ON private.child ((v % 10))",
        )
    run(postgres, database, *["SELECT count(*) FROM private.log WHERE id = 1"] * 6)
    # The last session's statistics arrive after the earlier ones'.
    wait_stats(
        postgres,
        database,
        "(SELECT seq_scan = 6 FROM pg_stat_user_tables WHERE relname = 'log')",
        "the scans counted",
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_as = postgres.dsn(database, user=monitor_role)
        with psycopg.connect(run_as) as conn:
            conn.execute("SELECT count(*) FROM private.child")

    params = {
        "index_health": {
            "unused_min_bytes": 100_000,
            "missing_index_min_rows": 10_000,
            # The three index builds and the failed one scanned child four times.
            "missing_index_min_seq_scans": 6,
        }
    }
    as_superuser = collect(postgres, database, params=params)
    as_monitor = collect(postgres, database, user=monitor_role, params=params)

    def published(samples: Samples) -> Samples:
        return {
            key: v
            for key, v in samples.items()
            if key[0].startswith(("pg_index_health_", "pg_indexes_", "pg_tables_", "pg_statio_"))
        }

    assert published(as_monitor) == published(as_superuser)
    # ... and what both see is the planted problems, so the comparison is not vacuous.
    assert problems(as_monitor, database) == {
        "unused": 3,  # child_v, child_v_again, child_w
        "duplicate": 1,
        "redundant": 0,
        "invalid": 1,
        "missing_index": 1,
        "unindexed_fk": 1,
    }
    assert flagged(
        as_monitor, "pg_index_health_invalid_index_size_bytes", database, "indexrelname"
    ) == {("child_dup",)}
    assert flagged(
        as_monitor, "pg_index_health_missing_index_seq_tup_read_total", database, "relname"
    ) == {("log",)}
    sizes = labelled(as_monitor, "pg_tables_size_bytes", database, "schemaname", "relname")
    assert sizes[("private", "child")] == query(
        postgres, database, "SELECT pg_total_relation_size('private.child')"
    )
