"""Connections: states, ages, lock waits and the limits connections count against."""

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest

from exporter.collection import CollectorJob, ProbeJob
from exporter.demo.embedded import LocalPostgres
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.targets import TargetRegistry
from support import Samples, exporter_config, parse_exposition, value, wait_for


def collect(dsn: str, **override: Any) -> Samples:
    """Run the connections collector once against the server at `dsn`."""
    overrides = {"connections": {"interval": "15s", "timeout": "5s", **override}}
    config = exporter_config(dsn, collectors=overrides)
    collector = next(c for c in config.catalogue if c.name == "connections")
    store = Store(self_metrics=self_metrics)
    registry = TargetRegistry()
    try:
        target = registry.add(config.targets[0])
        ProbeJob(target, store)()
        CollectorJob(target, collector, store, max_age_intervals=60)()
        samples = parse_exposition(store.snapshot().body.decode())
    finally:
        registry.close()
    assert value(samples, "pg_exporter_collector_up", collector="connections") == 1
    return samples


@pytest.fixture(scope="module")
def roles(postgres: LocalPostgres) -> Iterator[None]:
    """A pg_monitor-only role to collect with, and roles with connection limits."""
    names = {
        "conn_monitor": "IN ROLE pg_monitor",
        "conn_limited": "CONNECTION LIMIT 2",
        "conn_roomy": "CONNECTION LIMIT 10",
    }
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name, options in names.items():
            conn.execute(f"DROP ROLE IF EXISTS {name}")
            conn.execute(f"CREATE ROLE {name} LOGIN {options}")
    yield
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def monitor_dsn(postgres: LocalPostgres, roles: None) -> str:
    return postgres.dsn(user="conn_monitor")


@contextmanager
def running(postgres: LocalPostgres, database: str, statement: str) -> Iterator[int]:
    """Run `statement` in a thread on its own connection; yields its backend pid.

    The statement has a deadline of its own (statement_timeout) and is cancelled on exit, so
    a failing test never leaves it behind.
    """
    conn = psycopg.connect(
        postgres.dsn(database), autocommit=True, options="-c statement_timeout=30s"
    )
    failures: list[BaseException] = []

    def work() -> None:
        try:
            conn.execute(statement.encode())
        except psycopg.errors.QueryCanceled:
            pass
        except psycopg.Error as exc:
            failures.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield conn.info.backend_pid
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (conn.info.backend_pid,))
        thread.join(timeout=30)
        conn.close()
    assert not thread.is_alive(), f"{statement!r} did not end"
    assert not failures, failures


def wait_event(postgres: LocalPostgres, pid: int) -> tuple[str, str] | None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def test_transaction_query_and_idle_in_transaction_ages(
    postgres: LocalPostgres, database: str, other_database: str, monitor_dsn: str
) -> None:
    with (
        psycopg.connect(postgres.dsn(database), application_name="forgetful-app") as idle,
        running(postgres, other_database, "SELECT pg_sleep(60)") as busy,
    ):
        idle.execute("SELECT 1")  # opens a transaction and leaves it open
        wait_for(lambda: wait_event(postgres, busy) == ("active", "Timeout"), what="pg_sleep")

        first = collect(monitor_dsn)
        assert (
            value(
                first,
                "pg_connections_backends",
                datname=database,
                user="postgres",
                application_name="forgetful-app",
                state="idle in transaction",
                wait_event_type="Client",
            )
            == 1
        )
        idle_age = value(
            first, "pg_connections_max_idle_in_transaction_age_seconds", datname=database
        )
        assert idle_age is not None and idle_age > 0
        xact_age = value(first, "pg_connections_max_transaction_age_seconds", datname=database)
        assert xact_age is not None and xact_age >= idle_age
        assert value(first, "pg_connections_max_query_age_seconds", datname=database) == 0
        # The neighbour runs a long query but has no idle transaction.
        query_age = value(first, "pg_connections_max_query_age_seconds", datname=other_database)
        assert query_age is not None and query_age > 0
        assert (
            value(
                first, "pg_connections_max_idle_in_transaction_age_seconds", datname=other_database
            )
            == 0
        )

        def older() -> bool:
            again = collect(monitor_dsn)
            age = value(
                again, "pg_connections_max_idle_in_transaction_age_seconds", datname=database
            )
            return age is not None and age > idle_age

        wait_for(older, what="the idle transaction's age to grow")
        idle.rollback()
    after = collect(monitor_dsn)
    assert value(after, "pg_connections_max_idle_in_transaction_age_seconds", datname=database) == 0


def test_blocked_and_blocking_sessions(
    postgres: LocalPostgres, database: str, other_database: str, monitor_dsn: str
) -> None:
    with psycopg.connect(postgres.dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE account (id int PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO account VALUES (1, 0)")
    with psycopg.connect(postgres.dsn(database)) as holder:
        holder.execute("UPDATE account SET balance = 1 WHERE id = 1")  # holds the row lock
        with running(postgres, database, "UPDATE account SET balance = 2 WHERE id = 1") as waiter:
            wait_for(lambda: wait_event(postgres, waiter) == ("active", "Lock"), what="lock wait")

            samples = collect(monitor_dsn)
            assert value(samples, "pg_connections_blocked", datname=database) == 1
            assert value(samples, "pg_connections_blocking", datname=database) == 1
            assert value(samples, "pg_connections_blocked", datname=other_database) == 0
            assert value(samples, "pg_connections_blocking", datname=other_database) == 0
            waiting = value(
                samples,
                "pg_connections_backends",
                datname=database,
                state="active",
                wait_event_type="Lock",
            )
            assert waiting == 1
            wait_age = value(samples, "pg_connections_max_lock_wait_age_seconds", datname=database)
            if postgres.version_num() >= 140000:
                assert wait_age is not None and wait_age > 0
                assert (
                    value(
                        samples, "pg_connections_max_lock_wait_age_seconds", datname=other_database
                    )
                    == 0
                )
            else:
                assert wait_age is None  # PostgreSQL 13 does not record when a wait began
            holder.rollback()  # the waiter gets the lock and finishes
    samples = collect(monitor_dsn)
    assert value(samples, "pg_connections_blocked", datname=database) == 0


def test_database_and_role_connection_limits(
    postgres: LocalPostgres, database: str, other_database: str, monitor_dsn: str
) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" CONNECTION LIMIT 4')
    with ExitStack() as stack:
        for user in ("conn_limited", "conn_limited", "conn_roomy"):
            stack.enter_context(psycopg.connect(postgres.dsn(database, user=user)))

        samples = collect(monitor_dsn)
        assert value(samples, "pg_connections_database_limit", datname=database) == 4
        assert value(samples, "pg_connections_database_limit_used_ratio", datname=database) == 0.75
        assert value(samples, "pg_connections_database_limit", datname=other_database) is None
        assert value(samples, "pg_connections_role_limit", user="conn_limited") == 2
        assert value(samples, "pg_connections_role_limit_used_ratio", user="conn_limited") == 1
        assert value(samples, "pg_connections_role_limit_used_ratio", user="conn_roomy") == 0.1
        assert value(samples, "pg_connections_role_limit", user="postgres") is None


def test_application_names_are_bounded(postgres: LocalPostgres, database: str) -> None:
    apps = ["busy-app"] * 4 + ["other-app"] * 3 + ["rare-1", "rare-2", "rare-3"]
    with ExitStack() as stack:
        for app in apps:
            stack.enter_context(psycopg.connect(postgres.dsn(database), application_name=app))

        samples = collect(postgres.dsn(), params={"max_applications": 2})
    in_database = {
        dict(labels)["application_name"]: v
        for (name, labels), v in samples.items()
        if name == "pg_connections_backends" and ("datname", database) in labels
    }
    assert in_database == {"busy-app": 4, "other-app": 3, "(other)": 3}


def test_connections_near_the_server_limit() -> None:
    settings = {"max_connections": "20", "superuser_reserved_connections": "2"}
    with LocalPostgres(preload_libraries=(), settings=settings) as pg:
        reserved = 0
        if pg.version_num() >= 160000:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET reserved_connections = 3")
            pg.restart()
            reserved = 3
        usable = 20 - 2 - reserved
        quiet = collect(pg.dsn())
        assert value(quiet, "pg_connections_max") == 20
        assert value(quiet, "pg_connections_superuser_reserved") == 2
        assert value(quiet, "pg_connections_reserved") == reserved
        quiet_ratio = value(quiet, "pg_connections_used_ratio")
        assert quiet_ratio is not None and quiet_ratio <= 2 / usable

        crowd = usable - 2
        with ExitStack() as stack:
            for _ in range(crowd):
                stack.enter_context(psycopg.connect(pg.dsn(), application_name="crowd"))
            busy = collect(pg.dsn())
        ratio = value(busy, "pg_connections_used_ratio")
        # The crowd, plus the exporter's own connection.
        assert ratio is not None and (crowd + 1) / usable <= ratio <= (crowd + 2) / usable
        assert (
            value(busy, "pg_connections_backends", application_name="crowd", state="idle") == crowd
        )
