"""/health and /health.json on a real server: hostile names planted in a real database are
shown as text, and the JSON is the report's documented document."""

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import psycopg
import pytest
from psycopg import sql

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import REPO, wait_for
from support.pages import page_text

SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())
# Names as hostile as PostgreSQL allows: quotes, markup, an entity, a newline. (Not a newline
# in the database's name: the databases filter's patterns are matched without re.DOTALL, so
# such a database is never visited.)
DATABASE = "h\"'<u>&amp; q"
TABLE = "<script>document.title='owned'</script>"
INDEX = "<img src=x onerror=alert(1)>\"'&\nz"
# How the report writes them (identifiers quoted, double quotes doubled).
QUALIFIED_INDEX = 'public."<img src=x onerror=alert(1)>""\'&\nz"'
QUALIFIED_TABLE = "public.\"<script>document.title='owned'</script>\""


@pytest.fixture
def hostile_database(postgres: LocalPostgres) -> Iterator[str]:
    """A database, table and unused index named with HTML's special characters."""
    name = sql.Identifier(DATABASE)
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        with psycopg.connect(postgres.dsn(DATABASE), autocommit=True) as conn:
            table, index = sql.Identifier(TABLE), sql.Identifier(INDEX)
            conn.execute(sql.SQL("CREATE TABLE {} (id int, v int)").format(table))
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, g % 7 FROM generate_series(1, 5000) g").format(
                    table
                )
            )
            conn.execute(sql.SQL("CREATE INDEX {} ON {} (v)").format(index, table))
        yield DATABASE
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def unused_index(port: int) -> dict[str, Any] | None:
    document = json.loads(get(port, "/health.json")[1])
    found = [
        f for f in document["findings"] if f["check"] == "unused_index" and f["severity"] != "ok"
    ]
    return found[0] if found else None


def test_hostile_names_are_shown_as_text(
    postgres: LocalPostgres, hostile_database: str, run_exporter: Any
) -> None:
    config = parse_config(
        {
            "up_interval": "1s",
            "targets": [
                {
                    "name": "pg",
                    "dsn": postgres.dsn(),
                    "connect_timeout": "2s",
                    "databases": {"include": [re.escape(hostile_database)]},
                }
            ],
            "collectors": {
                "index_health": {
                    "interval": "1s",
                    "timeout": "1s",
                    "params": {"unused_min_bytes": 0},
                }
            },
        }
    )
    exporter: Exporter = run_exporter(config)
    port = exporter.server.port
    finding = wait_for(lambda: unused_index(port), what="the unused index on /health.json")
    assert (finding["database"], finding["object"]) == (DATABASE, QUALIFIED_INDEX)
    assert finding["fix"] == f"DROP INDEX CONCURRENTLY {QUALIFIED_INDEX};"

    content_type, body = get(port, "/health.json")
    assert content_type == "application/json"
    jsonschema.validate(json.loads(body), SCHEMA)

    content_type, page = get(port, "/health")
    assert content_type == "text/html; charset=utf-8"
    parsed = page_text(page)
    # The names created no element and ran nothing: the page's own copy script only.
    assert parsed.tags.count("script") == 1
    assert {"img", "u"}.isdisjoint(parsed.tags)
    assert parsed.title == "PostgreSQL health · pg-health-exporter"
    # Each name reads back exactly as the database has it.
    assert QUALIFIED_INDEX in parsed.shown
    assert f"DROP INDEX CONCURRENTLY {QUALIFIED_INDEX};" in parsed.shown
    assert DATABASE in parsed.shown  # the finding's database, and in the per-database counts
    assert any(QUALIFIED_TABLE in text for text in parsed.shown)  # "On <table>. ..."
