"""Databases in every encoding PostgreSQL allows, and names that are not UTF-8 at all.

Each session reads text as UTF-8 (targets/sessions.py): the server converts from the
database's encoding, passes SQL_ASCII bytes through, and bytes that are not UTF-8 become
`\\xNN` escapes. Labels must be the names as written, never `b'...'`, and a database whose name
is not UTF-8 must be reported as not visited without stopping anything else.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import Samples, parse_exposition, value

# encoding -> (database, a table named in characters that encoding has)
ENCODED = {
    "SQL_ASCII": ("enc_sql_ascii", "café_crème"),  # stored as the UTF-8 bytes sent
    "LATIN1": ("enc_latin1", "crème_brûlée"),
    "EUC_JP": ("enc_euc_jp", "表_日本語"),
    "UTF8": ("enc_utf8", "naïve_日本_✓"),
}
BAD_NAME = b"bad_\xe9t\xe9"  # LATIN1 bytes: not UTF-8
BAD_LABEL = "bad_\\xe9t\\xe9"


@pytest.fixture
def encoded_server(private_postgres: LocalPostgres) -> Iterator[LocalPostgres]:
    with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
        for encoding, (database, _) in ENCODED.items():
            conn.execute(
                f"CREATE DATABASE {database} ENCODING '{encoding}' TEMPLATE template0"
                " LC_COLLATE 'C' LC_CTYPE 'C'"
            )
    for database, table in ENCODED.values():
        # The client sends UTF-8; the server converts to the database's encoding.
        dsn = private_postgres.dsn(database)
        with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as conn:
            conn.execute(f'CREATE TABLE "{table}" (id int)')
            conn.execute(f'SELECT * FROM "{table}"')  # a sequential scan: counted
    yield private_postgres


def collect(server: LocalPostgres, *databases: str, **target: Any) -> Samples:
    raw = {
        "targets": [
            {"name": db, "dsn": server.dsn(db), "connect_timeout": "5s", **target}
            for db in databases
        ],
        "collectors": {
            name: {"enabled": name in ("database", "tables")} for name in builtin_specs()
        },
    }
    return parse_exposition(run_once(parse_config(raw)).body.decode())


def label_values(samples: Samples, metric: str, label: str, **match: str) -> set[str]:
    wanted = set(match.items())
    return {
        dict(labels)[label]
        for (name, labels), _ in samples.items()
        if name == metric and wanted <= labels and label in dict(labels)
    }


def test_every_encoding_gives_the_names_as_written(encoded_server: LocalPostgres) -> None:
    targets = [database for database, _ in ENCODED.values()]
    samples = collect(encoded_server, *targets)
    for target in targets:
        assert value(samples, "pg_up", target=target) == 1, target
        for collector in ("database", "tables"):
            assert (
                value(samples, "pg_exporter_collector_up", target=target, collector=collector) == 1
            ), (target, collector)
        # Read from this target's own database (pg_stat_database), whatever its encoding.
        datnames = label_values(samples, "pg_database_xact_commit_total", "datname", target=target)
        assert set(targets) <= datnames, (target, datnames)
        # Each database visited from this target, its table named as written.
        for database, table in ENCODED.values():
            relnames = label_values(
                samples, "pg_tables_seq_scan_total", "relname", target=target, datname=database
            )
            assert table in relnames, (target, database, relnames)


def test_a_name_that_is_not_utf8_is_escaped_and_stops_nothing(
    encoded_server: LocalPostgres,
) -> None:
    # Only a SQL_ASCII database takes any bytes in an identifier; pg_database is shared, so
    # the name then shows in every database's view of it.
    with psycopg.connect(
        encoded_server.dsn("enc_sql_ascii"), autocommit=True, client_encoding="SQL_ASCII"
    ) as conn:
        conn.execute(b'CREATE DATABASE "' + BAD_NAME + b'"')
    samples = collect(encoded_server, "postgres", "enc_sql_ascii")
    for target in ("postgres", "enc_sql_ascii"):
        assert value(samples, "pg_up", target=target) == 1, target
        assert value(samples, "pg_exporter_collector_up", target=target, collector="tables") == 1
        assert (
            value(
                samples,
                "pg_exporter_database_not_visited",
                target=target,
                datname=BAD_LABEL,
                reason="its name is not valid UTF-8",
            )
            == 1
        )
        datnames = label_values(samples, "pg_database_xact_commit_total", "datname", target=target)
        assert BAD_LABEL in datnames and "enc_utf8" in datnames
        visited = label_values(samples, "pg_tables_seq_scan_total", "datname", target=target)
        assert {"enc_latin1", "enc_euc_jp"} <= visited


def test_revoked_connect_shows_as_not_visited(encoded_server: LocalPostgres) -> None:
    with psycopg.connect(encoded_server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE enc_monitor LOGIN IN ROLE pg_monitor")
        conn.execute("REVOKE CONNECT ON DATABASE enc_latin1 FROM PUBLIC")
    raw = {
        "targets": [
            {"name": "pg", "dsn": encoded_server.dsn(user="enc_monitor"), "connect_timeout": "5s"}
        ]
    }
    samples = parse_exposition(run_once(parse_config(raw)).body.decode())
    assert value(samples, "pg_up", target="pg") == 1
    assert (
        value(
            samples,
            "pg_exporter_database_not_visited",
            datname="enc_latin1",
            reason="CONNECT is not granted to the role",
        )
        == 1
    )
    visited = label_values(samples, "pg_tables_seq_scan_total", "datname")
    assert "enc_latin1" not in visited and "enc_utf8" in visited
