"""Connections to one target: a small pool for its own database, bounded visits to the others.

Every session is read-only and identifies itself, with a short lock_timeout so the exporter never
queues behind DDL, and idle_in_transaction_session_timeout so a stuck exporter cannot hold a
snapshot. The total number of connections to a target never exceeds its `max_connections`:
the pool gets all but one of them, visits to other databases share the last one.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from exporter.config import TargetConfig

APPLICATION_NAME = "pg-health-exporter"


class ConnectFailed(Exception):
    """No connection to the target could be had within the connect timeout."""


def session_options(target: TargetConfig) -> dict[str, Any]:
    """libpq keyword arguments that every session of the exporter uses."""
    if target.type == "pgbouncer":
        # The admin console takes no `options` and no transactions; SHOW is all it can do.
        return {
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, round(target.connect_timeout)),
            "autocommit": True,
        }
    settings = {
        "default_transaction_read_only": "on",
        "lock_timeout": f"{int(target.lock_timeout * 1000)}ms",
        "idle_in_transaction_session_timeout": (
            f"{int(target.idle_in_transaction_timeout * 1000)}ms"
        ),
    }
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return {
        "application_name": APPLICATION_NAME,
        "connect_timeout": max(1, round(target.connect_timeout)),
        "options": options,
        "autocommit": False,
    }


class TargetConnections:
    def __init__(self, target: TargetConfig) -> None:
        self._target = target
        self._kwargs = session_options(target)
        pool_size = target.max_connections - 1  # config guarantees at least 2
        self._visits = threading.BoundedSemaphore(1)
        self._pool = ConnectionPool(
            target.conninfo(),
            kwargs=self._kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            name=target.name,
            # A broken connection (server restart, pg_terminate_backend) is replaced at checkout.
            # The PgBouncer console answers no empty query; a broken one fails and is dropped.
            check=ConnectionPool.check_connection if target.type == "postgres" else _check_console,
            # Give up a reconnection loop early: the next checkout starts a fresh attempt, so a
            # returning server is seen within one collector interval, not after a long backoff.
            reconnect_timeout=max(10.0, 2 * target.connect_timeout),
            timeout=target.connect_timeout,
            num_workers=1,
        )

    def open(self) -> None:
        """Start connecting in the background; never blocks start-up."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close(timeout=5.0)

    @contextmanager
    def connection(
        self, database: str | None = None, *, wait_seconds: float
    ) -> Iterator[psycopg.Connection[Any]]:
        """A session on the target's own database (None) or on another database.

        `wait_seconds` bounds the wait for a free connection: a job may queue behind another
        job's query, but not forever.
        """
        if database is None:
            try:
                with self._pool.connection(timeout=wait_seconds) as conn:
                    yield conn
            except PoolTimeout:
                raise ConnectFailed(self._explain_failure()) from None
            return
        if not self._visits.acquire(timeout=wait_seconds):
            raise ConnectFailed("all connections for visiting databases are busy")
        try:
            try:
                conn = psycopg.connect(self._target.conninfo(database), **self._kwargs)
            except psycopg.OperationalError as exc:
                raise ConnectFailed(first_line(exc)) from None
            with conn:
                yield conn
        finally:
            self._visits.release()

    def stats(self) -> dict[str, int]:
        """The pool's own counters (psycopg_pool's get_stats())."""
        return self._pool.get_stats()

    def _explain_failure(self) -> str:
        # The pool only says it timed out; one direct attempt tells the user why. It borrows the
        # visiting slot so that even this attempt stays within max_connections.
        if not self._visits.acquire(blocking=False):
            return "timed out waiting for a connection (all in use)"
        try:
            with psycopg.connect(self._target.conninfo(), **self._kwargs):
                return "timed out waiting for a pooled connection"
        except psycopg.Error as exc:
            return first_line(exc)
        finally:
            self._visits.release()


def _check_console(conn: psycopg.Connection[Any]) -> None:
    """PgBouncer's console rejects check_connection's empty query; SHOW VERSION is as cheap."""
    conn.execute("SHOW VERSION")


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only: libpq adds hints on further lines."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
