"""Maintenance: transaction ID wraparound per database, and who holds back the xmin horizon."""

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.catalogue import builtin_specs
from exporter.collection import run_once
from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from support import Samples, parse_exposition, value

WRAPAROUND = 2**31
XIDS = 25  # transaction IDs consumed after a holder took its snapshot

Conn = psycopg.Connection[tuple[Any, ...]]


def collect(dsn: str, collector: str) -> Samples:
    """Run one built-in collector once against the server of `dsn`."""
    collectors: dict[str, Any] = {name: {"enabled": False} for name in builtin_specs()}
    collectors[collector] = {"enabled": True}
    config = parse_config(
        {"targets": [{"name": "pg", "dsn": dsn, "connect_timeout": "5s"}], "collectors": collectors}
    )
    samples = parse_exposition(run_once(config).body.decode())
    assert value(samples, "pg_exporter_collector_up", collector=collector) == 1, samples
    return samples


def consume_xids(dsn: str, count: int = XIDS) -> None:
    """Assign `count` transaction IDs, one committed transaction each."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            conn.execute("SELECT txid_current()")


def ages(dsn: str) -> dict[str, tuple[int, int]]:
    """datname -> (age(datfrozenxid), mxid_age(datminmxid)) as PostgreSQL reports them now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, age(datfrozenxid), mxid_age(datminmxid) FROM pg_database"
        ).fetchall()
    return {name: (xid, mxid) for name, xid, mxid in rows}


def test_wraparound_age_of_every_database(postgres: LocalPostgres, database: str) -> None:
    dsn = postgres.dsn()
    before = ages(dsn)
    samples = collect(dsn, "wraparound")
    after = ages(dsn)
    assert database in after and "template0" in after
    for datname in after:
        xid_age = value(samples, "pg_wraparound_xid_age", datname=datname)
        mxid_age = value(samples, "pg_wraparound_mxid_age", datname=datname)
        assert xid_age is not None and mxid_age is not None, datname
        assert before[datname][0] <= xid_age <= after[datname][0] < WRAPAROUND
        assert before[datname][1] <= mxid_age <= after[datname][1] < WRAPAROUND
        assert value(samples, "pg_wraparound_xid_ratio", datname=datname) == pytest.approx(
            xid_age / WRAPAROUND
        )
        assert value(samples, "pg_wraparound_mxid_ratio", datname=datname) == pytest.approx(
            mxid_age / WRAPAROUND
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        settings: dict[str, float] = dict(
            conn.execute(
                "SELECT name, setting::float FROM pg_settings WHERE name IN"
                " ('autovacuum_freeze_max_age', 'autovacuum_multixact_freeze_max_age',"
                " 'vacuum_failsafe_age', 'vacuum_multixact_failsafe_age')"
            ).fetchall()
        )
    for name in ("autovacuum_freeze_max_age", "autovacuum_multixact_freeze_max_age"):
        assert value(samples, f"pg_wraparound_{name}") == settings[name]
    failsafe = value(samples, "pg_wraparound_vacuum_failsafe_age")
    assert failsafe == settings.get("vacuum_failsafe_age")  # None before PostgreSQL 14

    # Ages follow the transactions: every database ages with each transaction ID assigned.
    consume_xids(dsn)
    later = collect(dsn, "wraparound")
    for datname in after:
        grown = value(later, "pg_wraparound_xid_age", datname=datname)
        assert grown is not None and grown >= after[datname][0] + XIDS


@pytest.fixture
def monitor_dsn(postgres: LocalPostgres) -> str:
    """A DSN for a login role that is only a member of pg_monitor."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'maint_monitor'").fetchone():
            conn.execute("CREATE ROLE maint_monitor LOGIN IN ROLE pg_monitor")
    return postgres.dsn(user="maint_monitor")


def holder(samples: Samples, kind: str) -> tuple[float | None, float | None]:
    return (
        value(samples, "pg_xmin_horizon_age", holder=kind),
        value(samples, "pg_xmin_horizon_age_seconds", holder=kind),
    )


def test_open_snapshot_holds_the_horizon(postgres: LocalPostgres, monitor_dsn: str) -> None:
    started = time.monotonic()
    with psycopg.connect(postgres.dsn()) as session:
        session.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        session.execute("SELECT 1")  # takes the transaction's snapshot, and keeps it
        pid = session.info.backend_pid
        consume_xids(postgres.dsn())
        samples = collect(monitor_dsn, "xmin_horizon")  # seen by a pg_monitor-only role
        elapsed = time.monotonic() - started
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT age(backend_xmin) FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        assert row is not None
        age, seconds = holder(samples, "backend")
        assert age is not None and XIDS <= age <= row[0]
        assert seconds is not None and 0 < seconds <= elapsed + 1
        session.rollback()
    samples = collect(monitor_dsn, "xmin_horizon")
    age, _ = holder(samples, "backend")
    assert age is not None and age < XIDS
    for kind in ("prepared_xact", "replication_slot", "replication_slot_catalog"):
        assert holder(samples, kind)[0] == 0


@pytest.fixture(scope="module")
def holders_server() -> Iterator[LocalPostgres]:
    """A server that allows prepared transactions and logical replication slots."""
    server = LocalPostgres(settings={"max_prepared_transactions": "5", "wal_level": "logical"})
    server.start()
    yield server
    server.cleanup()


def test_prepared_transaction_holds_the_horizon(holders_server: LocalPostgres) -> None:
    dsn = holders_server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT txid_current()")  # a transaction ID for the horizon to respect
        conn.execute("PREPARE TRANSACTION 'held_by_test'")
    try:
        consume_xids(dsn)
        samples = collect(dsn, "xmin_horizon")
        age, seconds = holder(samples, "prepared_xact")
        assert age is not None and age >= XIDS
        assert seconds is not None and seconds > 0
        backend_age, _ = holder(samples, "backend")
        assert backend_age is not None and backend_age < XIDS
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("COMMIT PREPARED 'held_by_test'")
    assert holder(collect(dsn, "xmin_horizon"), "prepared_xact") == (0, 0)


def test_logical_slot_holds_the_catalog_horizon(holders_server: LocalPostgres) -> None:
    dsn = holders_server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # pgoutput is built in; creating the slot needs no subscriber.
        conn.execute("SELECT pg_create_logical_replication_slot('held_by_test', 'pgoutput')")
    try:
        consume_xids(dsn)
        samples = collect(dsn, "xmin_horizon")
        age, seconds = holder(samples, "replication_slot_catalog")
        assert age is not None and age >= XIDS
        assert seconds is None  # a slot has no transaction start
        assert holder(samples, "replication_slot")[0] == 0  # only a standby's feedback sets xmin
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('held_by_test')")
    assert holder(collect(dsn, "xmin_horizon"), "replication_slot_catalog")[0] == 0
