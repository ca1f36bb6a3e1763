"""Every fix the report prints runs: on the demo's planted problems and on schemas as they are
in the wild (partitioned tables at two levels, a domain over integer, a schema whose name needs
quoting, an unlogged table, a materialized view, an inheritance child, another session's
temporary table), each statement of each fix succeeds, and the next collection no longer has
the finding.

A fix may uncover the next step: VACUUM of a table bloated by dead rows leaves free space, for
which the report then says VACUUM FULL. So fixes run in rounds until none is left, and a fix
that was run never comes back.
"""

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.demo.workload import COLLECTOR_PARAMS, Planted, plant_problems
from exporter.report.build import build_report
from exporter.report.checks import Thresholds
from exporter.report.findings import Finding, Report
from support import fresh_database, wait_for

INT4_MAX = 2**31 - 1
NEAR = round(0.95 * INT4_MAX)
SCHEMA = '"Sales ""EU"""'  # a schema whose name needs quoting: Sales "EU"
ROWS = 12_000

Conn = psycopg.Connection[tuple[Any, ...]]

# Partitioned at two levels, each the way partitions arrive: created as partitions, attached,
# and one already carrying exactly the index its parent will need. Its foreign key has no
# index; its index on status is never scanned; a domain column is fed by a bigint sequence
# near the end of the integer range.
WILD = f"""
CREATE SCHEMA {SCHEMA};
SET search_path = {SCHEMA}, public;
CREATE DOMAIN order_no AS integer CHECK (VALUE > 0);
CREATE SEQUENCE numbers AS bigint;
CREATE TABLE orders (
  id bigint NOT NULL, organization_id uuid REFERENCES public.organizations,
  placed date NOT NULL, status text NOT NULL, number order_no DEFAULT nextval('numbers')
) PARTITION BY RANGE (placed);
CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
  PARTITION BY LIST (status);
CREATE TABLE "orders_2025 open" PARTITION OF orders_2025 FOR VALUES IN ('open');
CREATE TABLE orders_2025_closed (LIKE orders_2025);
CREATE INDEX orders_2025_closed_organization_id_idx ON orders_2025_closed (organization_id);
ALTER TABLE orders_2025 ATTACH PARTITION orders_2025_closed FOR VALUES IN ('closed');
CREATE INDEX orders_status_idx ON orders (status);
INSERT INTO orders (id, organization_id, placed, status)
  SELECT g, (SELECT id FROM public.organizations ORDER BY id LIMIT 1),
         date '2024-07-01' + (g % 360), CASE WHEN g % 2 = 0 THEN 'open' ELSE 'closed' END
  FROM generate_series(1, {ROWS}) AS g;
CREATE TABLE invoices (number integer DEFAULT nextval('numbers'));
SELECT setval('numbers', {NEAR});
-- A serial: its sequence is an integer one too.
CREATE TABLE tickets (id serial);
SELECT setval('tickets_id_seq', {NEAR});
-- Free space: vacuumed after most rows went, so VACUUM has nothing left to do.
CREATE TABLE archive (id bigint, body text) WITH (autovacuum_enabled = false);
INSERT INTO archive SELECT g, repeat('x', 200) FROM generate_series(1, 40000) AS g;
DELETE FROM archive WHERE id % 5 <> 0;
VACUUM archive;
-- An unlogged table with a foreign key, a materialized view and an inheritance child with
-- twin indexes.
CREATE UNLOGGED TABLE carts (id bigint, organization_id uuid REFERENCES public.organizations);
CREATE MATERIALIZED VIEW plans AS SELECT plan, count(*) AS n FROM public.organizations GROUP BY plan;
CREATE INDEX plans_plan ON plans (plan);
CREATE INDEX plans_plan_again ON plans (plan);
CREATE TABLE notes (id bigint, body text);
CREATE TABLE notes_2024 () INHERITS (notes);
CREATE INDEX notes_2024_id ON notes_2024 (id);
CREATE INDEX notes_2024_id_again ON notes_2024 (id);
"""

# Another session's temporary table with twin indexes and dead rows: only that session could
# drop them or vacuum it.
TEMPORARY = """
CREATE TEMP TABLE scratch (id bigint);
CREATE INDEX scratch_id ON scratch (id);
CREATE INDEX scratch_id_again ON scratch (id);
INSERT INTO scratch SELECT generate_series(1, 20000);
DELETE FROM scratch;
"""


@dataclasses.dataclass(frozen=True)
class Wild:
    postgres: LocalPostgres
    database: str
    planted: Planted
    temporary: Conn  # the session whose temporary table must not be touched

    def config(self) -> Config:
        params: dict[str, Any] = {n: {"params": dict(p)} for n, p in COLLECTOR_PARAMS.items()}
        params["statement_text"] = {"enabled": True}
        return parse_config(
            {
                "targets": [
                    {
                        "name": "pg",
                        "dsn": self.postgres.dsn(self.database),
                        "connect_timeout": "5s",
                        "databases": {"include": [re.escape(self.database)]},
                    }
                ],
                "collectors": params,
            }
        )


@pytest.fixture
def wild(postgres: LocalPostgres) -> Iterator[Wild]:
    with fresh_database(postgres) as database:
        dsn = postgres.dsn(database)
        planted = plant_problems(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # One at a time: VACUUM cannot run in the transaction of a multi-statement string.
            for statement in re.split(r";\s*\n", WILD.strip().removesuffix(";")):
                conn.execute(statement.encode())
            # Transaction IDs go by, so the database is old enough to be flagged at half its
            # age, and freezing brings it near zero (the temporary table, which no VACUUM of
            # ours can freeze, comes after them).
            conn.execute(
                "DO $$ BEGIN FOR i IN 1..1000 LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$"
            )
        with (
            psycopg.connect(dsn, autocommit=True) as temporary,
            psycopg.connect(dsn, autocommit=True) as observer,
        ):
            temporary.execute(TEMPORARY)
            # A session reports its statistics when idle, at most every 500 ms before
            # PostgreSQL 15 (each statement here is a chance), on request from 15.
            poke = (
                "SELECT pg_stat_force_next_flush()"
                if postgres.version_num() >= 150000
                else "SELECT 1"
            )

            def dead_rows_seen() -> bool:
                temporary.execute(poke)
                row = observer.execute(
                    "SELECT n_dead_tup FROM pg_stat_all_tables WHERE relname = 'scratch'"
                ).fetchone()
                return row is not None and row[0] >= 20_000

            wait_for(dead_rows_seen, timeout=30, what="the temporary table's dead rows")
            yield Wild(postgres, database, planted, temporary)


def _age(conn: Conn) -> int:
    row = conn.execute(
        "SELECT age(datfrozenxid) FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _key(finding: Finding) -> tuple[str, str | None, str | None, str | None]:
    return finding.check, finding.database, finding.object, finding.fix


def run_fix(wild: Wild, finding: Finding) -> None:
    """Each statement of the fix on its own (as psql runs a script), in its database."""
    assert finding.fix is not None
    dsn = wild.postgres.dsn(finding.database or wild.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in finding.fix.splitlines():
            assert statement.endswith(";"), finding.fix
            conn.execute(statement.encode())


def fix_everything(wild: Wild, thresholds: Thresholds) -> tuple[Report, dict[str, list[Finding]]]:
    """Run every fix the report prints, in rounds; the first report, and what ran per check."""
    first = report = build_report(wild.config(), thresholds=thresholds)
    ran: dict[tuple[str, str | None, str | None, str | None], Finding] = {}
    for _ in range(4):
        todo = [f for f in report.findings if f.fix is not None]
        if not todo:
            break
        for finding in todo:
            assert _key(finding) not in ran, f"a fix that ran did not help: {finding}"
            run_fix(wild, finding)
            ran[_key(finding)] = finding
        report = build_report(wild.config(), thresholds=thresholds)
    left = [f for f in report.findings if f.fix is not None]
    assert left == [], left
    by_check: dict[str, list[Finding]] = {}
    for finding in ran.values():
        by_check.setdefault(finding.check, []).append(finding)
    return first, by_check


def test_every_fix_runs_and_the_finding_goes(wild: Wild) -> None:
    db, schema = wild.database, SCHEMA
    with psycopg.connect(wild.postgres.dsn(db), autocommit=True) as conn:
        age = _age(conn)
    thresholds = Thresholds(wraparound_warning=age / 2 / 2**31, wraparound_critical=1.0)
    first, ran = fix_everything(wild, thresholds)

    def fixed(check: str, obj: str | None = None) -> Finding:
        found = [f for f in ran.get(check, []) if obj is None or f.object == obj]
        assert len(found) == 1, (check, obj, ran.get(check))
        return found[0]

    p = wild.planted
    # The demo's problems: each fixed by the statement the report gave.
    for check, name in (
        ("unused_index", p.unused_index),
        ("duplicate_index", p.duplicate_index),
        ("invalid_index", p.invalid_index),
    ):
        assert (
            fixed(check, p.qualified(name)).fix == f"DROP INDEX CONCURRENTLY {p.qualified(name)};"
        )
    # Dead rows: VACUUM; the free space it leaves: VACUUM FULL, in the next round.
    events = p.qualified(p.bloated_table)
    assert [f.fix for f in ran["table_bloat"] if f.object == events] == [
        f"VACUUM (ANALYZE) {events};",
        f"VACUUM FULL {events};",
    ]
    # Free space from the start: VACUUM would not help.
    archive = fixed("table_bloat", f"{schema}.archive")
    assert archive.fix == f"VACUUM FULL {schema}.archive;"
    assert "free space" in archive.summary
    # A partitioned table's foreign key: the parent ON ONLY, each partition concurrently (or
    # its existing twin attached), attached deepest first.
    orders = f"{schema}.orders"
    key = fixed("unindexed_foreign_key", f"{orders}.orders_organization_id_fkey")
    assert key.fix is not None
    assert key.fix.splitlines() == [
        f"CREATE INDEX orders_organization_id_idx ON ONLY {orders} (organization_id);",
        f"CREATE INDEX orders_2025_organization_id_idx ON ONLY {schema}.orders_2025"
        " (organization_id);",
        f"CREATE INDEX CONCURRENTLY orders_2024_organization_id_idx ON {schema}.orders_2024"
        " (organization_id);",
        f'CREATE INDEX CONCURRENTLY "orders_2025 open_organization_id_idx" ON {schema}."orders_2025'
        ' open" (organization_id);',
        f"ALTER INDEX {schema}.orders_organization_id_idx ATTACH PARTITION"
        f" {schema}.orders_2024_organization_id_idx;",
        f"ALTER INDEX {schema}.orders_2025_organization_id_idx ATTACH PARTITION"
        f' {schema}."orders_2025 open_organization_id_idx";',
        f"ALTER INDEX {schema}.orders_2025_organization_id_idx ATTACH PARTITION"
        f" {schema}.orders_2025_closed_organization_id_idx;",
        f"ALTER INDEX {schema}.orders_organization_id_idx ATTACH PARTITION"
        f" {schema}.orders_2025_organization_id_idx;",
    ]
    # The unused index of the partitioned table: once, on the parent, not concurrently.
    unused = fixed("unused_index", f"{schema}.orders_status_idx")
    assert unused.fix == f"DROP INDEX {schema}.orders_status_idx;"
    assert unused.values["partitions"] == 3
    # Sequences: the columns that overflow are widened (the domain's, the partitioned
    # table's once for all its partitions); a serial's integer sequence too.
    numbers = fixed("sequences", f"{schema}.numbers")
    assert numbers.fix is not None
    assert sorted(numbers.fix.splitlines()) == [
        f"ALTER TABLE {schema}.invoices ALTER COLUMN number TYPE bigint;",
        f"ALTER TABLE {schema}.orders ALTER COLUMN number TYPE bigint;",
    ]
    assert "orders_2024" in numbers.detail and "order_no" in numbers.detail
    assert fixed("sequences", f"{schema}.tickets_id_seq").fix == (
        f"ALTER SEQUENCE {schema}.tickets_id_seq AS bigint;\n"
        f"ALTER TABLE {schema}.tickets ALTER COLUMN id TYPE bigint;"
    )
    # The unlogged table, the materialized view and the inheritance child are fixed as tables.
    assert fixed("unindexed_foreign_key", f"{schema}.carts.carts_organization_id_fkey").fix == (
        f"CREATE INDEX CONCURRENTLY ON {schema}.carts (organization_id);"
    )
    fixed("duplicate_index", f"{schema}.plans_plan_again")
    fixed("duplicate_index", f"{schema}.notes_2024_id_again")
    # Wraparound: VACUUM (FREEZE) where one can connect; never in template0.
    assert db in {f.database for f in ran["wraparound"]}
    [template0] = [
        f for f in first.findings if f.check == "wraparound" and f.database == "template0"
    ]
    assert template0.fix is None and "VACUUM (FREEZE)" not in template0.advice
    assert "accepts no connections" in template0.advice
    # Nothing names a partition's index or a temporary table.
    objects = {f.object or "" for f in first.findings}
    assert not [o for o in objects if "scratch" in o or re.search(r"orders_20\d\d.*idx", o)]


def test_a_partitioned_table_is_judged_as_a_whole(wild: Wild) -> None:
    """Lookups scanning every partition: the parent is the one missing an index, though no
    partition alone has enough rows to be flagged; partitions are never named on their own."""
    dsn = wild.postgres.dsn(wild.database)
    lookups = 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path = {SCHEMA}")
        conn.execute("ANALYZE orders")
        for n in range(lookups):
            conn.execute("SELECT status FROM orders WHERE id = %s", (n,))

    def flagged() -> list[Finding]:
        found = build_report(wild.config()).findings
        return [f for f in found if f.check == "missing_index" and "orders" in (f.object or "")]

    [finding] = wait_for(flagged, timeout=30, what="the parent flagged as missing an index")
    assert finding.object == f"{SCHEMA}.orders"
    assert finding.values["partitions"] == 3
    assert finding.values["n_live_tup"] == ROWS
    assert (finding.values["seq_scan"] or 0) >= 3 * lookups  # each lookup scans 3 partitions
    assert f"ON ONLY {SCHEMA}.orders" in finding.advice
    # The same tables one by one: each partition is below the row threshold.
    partitions = ("orders_2024", "orders_2025 open", "orders_2025_closed")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT max(n_live_tup) FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(partitions),),
        ).fetchone()
    assert rows is not None and rows[0] < 10_000


def test_sessions_idle_in_transaction_are_ended_by_the_fix(wild: Wild) -> None:
    dsn = wild.postgres.dsn(wild.database)
    strict = Thresholds(idle_in_transaction_warning_seconds=0.0)
    with psycopg.connect(dsn, application_name="forgotten") as forgotten:
        forgotten.execute("SELECT 1")  # a transaction begun and never ended

        def idle() -> list[Finding]:
            found = build_report(wild.config(), thresholds=strict).findings
            return [f for f in found if f.check == "idle_in_transaction" and f.fix]

        [finding] = wait_for(idle, timeout=30, what="the idle session in the report")
        run_fix(wild, finding)
        wait_for(lambda: not idle(), timeout=30, what="the idle session ended")
        with pytest.raises(psycopg.OperationalError):
            forgotten.execute("SELECT 1")  # terminated
