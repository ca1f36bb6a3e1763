"""Hostile names: whatever PostgreSQL lets a user call a schema, a table or an index, the
exposition stays valid and every label value reads back as the name was written.

Hypothesis writes the names (quotes, backslashes, newlines, tabs, control characters, names of
63 bytes, names that differ only in case); each body passes promtool and prometheus_client's
parser with the names intact. A real Prometheus then scrapes a fixed set of the worst cases,
and reads them back through its HTTP API.
"""

import re
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from support import (
    RunExporter,
    fresh_database,
    parse_exposition,
    promtool_check_metrics,
    wait_for,
)
from support.promstack import LocalPrometheus

TABLES = "pg_tables_seq_scan_total"
INDEXES = "pg_indexes_size_bytes"
NAMEDATALEN = 64  # PostgreSQL's identifiers hold NAMEDATALEN - 1 bytes


def _identifier(text: str) -> str:
    """As PostgreSQL keeps it: cut to 63 bytes, never inside a character."""
    return text.encode()[: NAMEDATALEN - 1].decode(errors="ignore")


# Every character an identifier may hold (all but NUL), the troublesome ones often.
_CHARACTERS = st.one_of(
    st.sampled_from([*"\"'\\\n\t\r {}=,#", "\x01", "\x1b", "\x7f", "é", "日", "✓"]),
    st.characters(min_codepoint=1, exclude_categories=["Cs"]),
)
NAMES = st.text(_CHARACTERS, min_size=1, max_size=70).map(_identifier).filter(bool)
# The same name in another case is another relation.
CASED = NAMES.flatmap(lambda n: st.sampled_from([[n], [n, n.upper()], [n, n.lower(), n.upper()]]))
# PostgreSQL reserves the prefix pg_ for system schemas (CREATE SCHEMA refuses it).
SCHEMAS = NAMES.filter(lambda name: not name.startswith("pg_"))

WORST = [
    'say "hi"',
    "it's",
    "back\\slash\\",
    "new\nline",
    "tab\there",
    "ctl\x01\x1b\x7f",
    "Case",
    "CASE",
    "case",
    "é" * 31 + "x",  # 63 bytes exactly
    " padded ",
    'le="0.5",x="',  # looks like the exposition's own syntax
]


def _config(dsn: str, database: str) -> Config:
    """Only the collectors that name schemas, tables and indexes, every second; only this
    database."""
    wanted = {"tables", "indexes"}
    return parse_config(
        {
            "up_interval": "1s",
            "targets": [
                {"name": "pg", "dsn": dsn, "databases": {"include": [re.escape(database)]}}
            ],
            "collectors": {
                name: {"enabled": True, "interval": "1s", "timeout": "1s"}
                if name in wanted
                else {"enabled": False}
                for name in builtin_specs()
            },
        }
    )


def _plant(dsn: str, schema: str, tables: list[str]) -> set[tuple[str, str, str]]:
    """A schema of tables, each with an index PostgreSQL names itself; the (schema, table,
    index) triples as the catalogue holds them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The last example's schema goes: only this one's tables, all within the published top.
        for (old,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname <> 'public'"
            " AND nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(old)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table in tables:
            name = sql.Identifier(schema, table)
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(name))
            conn.execute(sql.SQL("CREATE INDEX ON {} (id)").format(name))
        rows = conn.execute(
            "SELECT schemaname, tablename, indexname FROM pg_indexes WHERE schemaname = %s",
            (schema,),
        ).fetchall()
    return {(s, t, i) for s, t, i in rows}


@pytest.fixture(scope="module")
def hostile_database(postgres: LocalPostgres) -> Iterator[str]:
    with fresh_database(postgres) as database:
        yield database


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=SCHEMAS, tables=st.lists(CASED, min_size=1, max_size=3))
def test_any_names_read_back_as_written(
    postgres: LocalPostgres, hostile_database: str, schema: str, tables: list[list[str]]
) -> None:
    dsn = postgres.dsn(hostile_database)
    planted = _plant(dsn, schema, list(dict.fromkeys(n for names in tables for n in names)))
    body = run_once(_config(dsn, hostile_database)).body
    promtool_check_metrics(body)
    samples = parse_exposition(body.decode())
    published = {
        (labels["schemaname"], labels["relname"], labels["indexrelname"])
        for name, label_set in samples
        if name == INDEXES
        for labels in [dict(label_set)]
        if labels["schemaname"] == schema
    }
    assert published == planted
    tables_published = {
        dict(label_set)["relname"]
        for name, label_set in samples
        if name == TABLES and dict(label_set)["schemaname"] == schema
    }
    assert tables_published == {t for _, t, _ in planted}


def test_prometheus_scrapes_the_worst_names_and_reads_them_back(
    postgres: LocalPostgres, hostile_database: str, run_exporter: RunExporter
) -> None:
    dsn = postgres.dsn(hostile_database)
    schema = "schema \"with\" 'all'\\ of\nit"
    planted = _plant(dsn, schema, WORST)
    exporter = run_exporter(_config(dsn, hostile_database))
    with LocalPrometheus([f"127.0.0.1:{exporter.server.port}"]) as prometheus:

        def read_back() -> set[tuple[str, str, str]]:
            return {
                (m["schemaname"], m["relname"], m["indexrelname"])
                for result in prometheus.query(INDEXES)
                for m in [result["metric"]]
                if m.get("schemaname") == schema
            }

        wait_for(lambda: read_back() == planted, timeout=60, what="every name read back")
        # The scrape itself was healthy: Prometheus parsed the whole body.
        up = prometheus.query('up{job="pg-health-exporter"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
