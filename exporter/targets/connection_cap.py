"""Every session the process holds, all targets together: at most `max_connections_total`.

Each target keeps the session it used last, so a process watching many servers would hold one
per server however rarely it polls them. Only running jobs use sessions, one each (at most
`workers` collector jobs and PROBE_WORKERS probes at once), and the cap is at least their sum:
so a new session past the cap never has to wait for a job; it closes the idle session used
least recently, whichever target holds it. Targets beyond the cap then log in when they run
instead of holding a session each (README, "Monitoring a fleet").
"""

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg

from exporter.errors import PoolBusy


class IdleSessions(Protocol):
    """What the cap needs of a pool: its least recently used idle session, and closing it."""

    def oldest_idle_since(self) -> float | None: ...

    def close_oldest_idle(self) -> bool: ...


class ConnectionCap:
    """The count of the process's sessions, and room made under the cap (None: no cap)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        # Sessions open, until closed() is told (a session dropped unclosed leaves the set).
        self._open: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._opening = 0  # sessions being opened: counted before the server sees them
        self._pools: list[IdleSessions] = []
        self._closed_for_room = 0
        self.waiting = 0  # callers waiting for room (for tests)

    def add_pool(self, pool: IdleSessions) -> None:
        with self._cond:
            self._pools.append(pool)

    def remove_pool(self, pool: IdleSessions) -> None:
        with self._cond:
            self._pools = [p for p in self._pools if p is not pool]

    def _count(self) -> int:
        """Under the lock: the sessions open or being opened."""
        return len(self._open) + self._opening

    @contextmanager
    def opening(self, seconds: float) -> Iterator[Callable[[psycopg.Connection[Any]], None]]:
        """Room for one new session, made within `seconds`; yields the function that counts
        the session once it is open. PoolBusy if every session stays in use that long (only
        when more threads than `workers` and the probes' use sessions at once)."""
        deadline = time.monotonic() + seconds
        while True:
            with self._cond:
                if self.limit is None or self._count() < self.limit:
                    self._opening += 1
                    break
                pools = list(self._pools)
            if self._close_least_recently_used(pools):
                continue
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolBusy(
                        f"all {self.limit} of the exporter's connections "
                        f"(max_connections_total) stayed in use for {seconds:g}s"
                    )
                # Until a session closes or comes back idle (freed()), then look again.
                self.waiting += 1
                try:
                    self._cond.wait(left)
                finally:
                    self.waiting -= 1

        def opened(conn: psycopg.Connection[Any]) -> None:
            with self._cond:
                self._open.add(conn)

        try:
            yield opened
        finally:
            with self._cond:
                self._opening -= 1
                self._cond.notify_all()

    def freed(self) -> None:
        """A session came back idle: a wait for room may end now."""
        with self._cond:
            self._cond.notify_all()

    def closed(self, conn: psycopg.Connection[Any]) -> None:
        """A session is closed (and its server process gone, where the closer waited)."""
        with self._cond:
            self._open.discard(conn)
            self._cond.notify_all()

    def _close_least_recently_used(self, pools: list[IdleSessions]) -> bool:
        """Close the idle session, of all pools, used least recently; whether there was one.
        (No pool's lock is taken under the cap's: pools tell the cap under theirs.)"""
        while True:
            candidates = [
                (since, pool) for pool in pools if (since := pool.oldest_idle_since()) is not None
            ]
            if not candidates:
                return False
            _, pool = min(candidates, key=lambda candidate: candidate[0])
            if pool.close_oldest_idle():
                with self._cond:
                    self._closed_for_room += 1
                return True
            # Taken by its target meanwhile: look again.

    def stats(self) -> dict[str, int]:
        """For the self-metrics (selfmetrics.CONNECTION_STATS); `max` 0: no cap."""
        with self._cond:
            return {
                "max": self.limit or 0,
                "open": self._count(),
                "closed_for_room": self._closed_for_room,
            }
