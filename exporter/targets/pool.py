"""A connection pool without threads of its own: sessions are opened by the thread that needs one.

psycopg_pool runs a scheduler thread and worker threads per pool, so each target cost two
threads however idle it was: 227 threads at 100 targets, where every collector job already
runs on the process's fixed worker pool. This pool keeps the same counters (get_stats()) and
the same guarantees for the exporter's use, with nothing running in the background:

- at most `max_size` sessions exist at once, counting those being opened;
- a checkout takes an idle session (the most recently used: the others can age out), checks
  it, and discards a broken one; else it opens a session on its own thread if there is room
  (failing with the server's own reason, at once, if it cannot), else waits for a return;
- a return rolls back an open transaction and closes a broken session;
- idle sessions beyond the first are closed after `max_idle`, and any session after
  `max_lifetime`, when the pool is next used (a target that is polled uses it every 15 s).
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq

_Conn = TypeVar("_Conn", bound=psycopg.Connection[Any])


class PoolError(Exception):
    pass


class PoolTimeout(PoolError):
    """Every session stayed in use for the whole wait."""


class PoolClosed(PoolError):
    """The pool was closed: the target is being removed, or the exporter stops."""


class PoolConnectFailed(PoolError):
    """A new session could not be opened; the message is the driver's first line."""


def check_connection(conn: psycopg.Connection[Any]) -> None:
    """An empty statement round trip: raises if the session is broken."""
    if conn.autocommit:
        conn.execute("")
        return
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        if not conn.closed:
            conn.autocommit = False


class SessionPool(Generic[_Conn]):
    def __init__(
        self,
        connect: Callable[[], _Conn],
        *,
        max_size: int,
        check: Callable[[_Conn], None] = check_connection,
        reset: Callable[[_Conn], None] | None = None,
        close: Callable[[_Conn], None] = lambda conn: conn.close(),
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,  # for sessions' ages only
        on_free: Callable[[], None] = lambda: None,
    ) -> None:
        self._connect = connect
        self._check = check
        self._reset = reset
        # Closes a session whose place is then free: the caller may wait for the server's
        # process to end, so that the next session opened in the place stays within the cap.
        self._close = close
        # Told (under the pool's lock) whenever a session or a place may have come free: for
        # a caller that waits for this pool or something else, whichever frees first.
        self._on_free = on_free
        self._max_size = max_size
        self._max_idle = max_idle
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: list[tuple[_Conn, float]] = []  # (session, idle since); the latest last
        self._born: dict[int, float] = {}  # id(session) -> when it was opened
        self._size = 0  # sessions that exist or are being opened, and places lent
        self._closed = False
        self._stats = dict.fromkeys(
            (
                "requests_num",
                "requests_queued",
                "requests_wait_ms",
                "requests_errors",
                "connections_num",
                "connections_ms",
                "connections_errors",
                "connections_lost",
            ),
            0,
        )
        self._waiting = 0

    # -- checkout and return ---------------------------------------------------------------

    @contextmanager
    def connection(self, timeout: float) -> Iterator[_Conn]:
        conn = self.getconn(timeout)
        try:
            yield conn
        finally:
            self.putconn(conn)

    def getconn(self, timeout: float) -> _Conn:
        """A checked session within `timeout` seconds of waiting for a free place."""
        with self._cond:
            self._stats["requests_num"] += 1
        return self._checkout(time.monotonic() + timeout, count=True)

    def getconn_now(self) -> _Conn | None:
        """A checked session if one is idle or a place is free at once; else None, with no
        wait and no failed request counted. The test and the taking are one step, so of two
        callers at once only one can have the last place."""
        try:
            conn = self._checkout(time.monotonic(), count=False)
        except PoolTimeout:
            return None
        with self._cond:
            self._stats["requests_num"] += 1
        return conn

    def idle_now(self) -> _Conn | None:
        """The most recently used idle session, taken out unchecked (for a caller whose use
        is the check), or None: never a wait, never a new session. Return it with putconn."""
        with self._cond:
            if self._closed or not self._idle:
                return None
            return self._idle.pop()[0]

    def _checkout(self, deadline: float, *, count: bool) -> _Conn:
        while True:
            idle = self._take_idle_or_place(deadline, count=count)
            if idle is None:
                return self._open()
            try:
                self._check(idle)
            except psycopg.Error:
                self._discard(idle, lost=True)
                continue
            except BaseException:
                self._discard(idle, lost=False)
                raise
            return idle

    def putconn(self, conn: _Conn) -> None:
        """A session back from its user: made ready for the next, or closed if broken."""
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            try:
                conn.rollback()  # a user that failed mid-transaction (the statement timed out)
            except psycopg.Error:
                conn.close()
        if not conn.closed and self._reset is not None:
            self._reset(conn)
        if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            self._discard(conn, lost=False)
            return
        with self._cond:
            if self._closed:
                self._size -= 1
                self._born.pop(id(conn), None)
            else:
                self._idle.append((conn, self._clock()))
                self._freed()
                return
        conn.close()

    @contextmanager
    def place(self, timeout: float) -> Iterator[bool]:
        """One of the pool's places, for a session of the caller's own (the probe's new
        login): an unopened place, or an idle session's, closed first (by `close_idle`). Yields
        whether a place was had within `timeout`; the place returns to the pool afterwards."""
        deadline = time.monotonic() + timeout
        try:
            idle = self._take_idle_or_place(deadline, count=False)
        except PoolTimeout:
            yield False
            return
        if idle is not None:
            with self._cond:
                self._born.pop(id(idle), None)
            self._close(idle)
        try:
            yield True
        finally:
            with self._cond:
                self._size -= 1
                self._freed()

    def oldest_idle_since(self) -> float | None:
        """When the least recently used idle session came back (the pool's clock), or None."""
        with self._cond:
            return self._idle[0][1] if self._idle and not self._closed else None

    def close_oldest_idle(self) -> bool:
        """Close the least recently used idle session, for room elsewhere (a process-wide
        cap); whether there was one."""
        with self._cond:
            if not self._idle or self._closed:
                return False
            conn, _ = self._idle.pop(0)
            self._born.pop(id(conn), None)
        self._close(conn)  # before the place is free
        with self._cond:
            self._size -= 1
            self._freed()
        return True

    # -- stats and lifecycle -------------------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's get_stats() keys that the exporter publishes."""
        with self._cond:
            return {
                "pool_min": 1,
                "pool_max": self._max_size,
                "pool_size": self._size,
                "pool_available": len(self._idle),
                "requests_waiting": self._waiting,
                **self._stats,
            }

    def close(self) -> None:
        """Close the idle sessions now; those in use are closed when returned. Never blocks
        on the server (a close only sends Terminate)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._freed(every=True)
        for conn, _ in idle:
            conn.close()

    # -- the pool's state, under its lock --------------------------------------------------

    def _freed(self, *, every: bool = False) -> None:
        """A session or a place may be had now (or the pool closed): wake a waiter, or all."""
        if every:
            self._cond.notify_all()
        else:
            self._cond.notify()
        self._on_free()

    def _take_idle_or_place(self, deadline: float, *, count: bool = True) -> _Conn | None:
        """An idle session, or None with a place taken for a new one; waits until
        `deadline` for either."""
        self._close_expired()
        started = time.monotonic()
        with self._cond:
            if not self._idle and self._size >= self._max_size and not self._closed:
                self._waiting += 1
                self._stats["requests_queued"] += count
                try:
                    self._cond.wait_for(
                        lambda: self._closed or self._idle or self._size < self._max_size,
                        max(0.0, deadline - time.monotonic()),
                    )
                finally:
                    self._waiting -= 1
                    if count:
                        self._stats["requests_wait_ms"] += int(1000 * (time.monotonic() - started))
            if self._closed:
                raise PoolClosed("the pool is closed")
            if self._idle:
                return self._idle.pop()[0]
            if self._size < self._max_size:
                self._size += 1
                return None
            self._stats["requests_errors"] += count
            raise PoolTimeout(f"no session free within {deadline - started:g}s")

    def _close_expired(self) -> None:
        """Close the idle sessions past their time; their places are free once closed."""
        with self._cond:
            gone = self._expire()
        if not gone:
            return
        for conn in gone:
            self._close(conn)
        with self._cond:
            self._size -= len(gone)
            self._freed(every=True)

    def _expire(self) -> list[_Conn]:
        """Under the lock: idle sessions past their time, taken out but still counted."""
        now = self._clock()
        keep: list[tuple[_Conn, float]] = []
        gone: list[_Conn] = []
        for conn, since in self._idle:
            too_old = now - self._born.get(id(conn), now) > self._max_lifetime
            # The most recently returned session is kept whatever its idle time: a target
            # polled at all keeps one session, as psycopg_pool's min_size=1 did.
            unused = now - since > self._max_idle and (conn, since) is not self._idle[-1]
            if too_old or unused:
                gone.append(conn)
                self._born.pop(id(conn), None)
            else:
                keep.append((conn, since))
        self._idle = keep
        return gone

    def _open(self) -> _Conn:
        """A new session in the place taken for it, on this thread."""
        started = time.monotonic()
        try:
            conn = self._connect()
        except BaseException as exc:
            with self._cond:
                self._size -= 1
                self._stats["connections_errors"] += 1
                self._stats["requests_errors"] += 1
                self._freed()
            if isinstance(exc, psycopg.Error):
                raise PoolConnectFailed(str(exc).strip().splitlines()[0]) from exc
            raise
        with self._cond:
            self._stats["connections_num"] += 1
            self._stats["connections_ms"] += int(1000 * (time.monotonic() - started))
            self._born[id(conn)] = self._clock()
            if self._closed:  # closed while this one was being opened
                self._size -= 1
                self._born.pop(id(conn), None)
                closed = True
            else:
                closed = False
        if closed:
            conn.close()
            raise PoolClosed("the pool is closed")
        return conn

    def _discard(self, conn: _Conn, *, lost: bool) -> None:
        self._close(conn)  # before the place is free
        with self._cond:
            self._size -= 1
            self._born.pop(id(conn), None)
            self._stats["connections_lost"] += lost
            self._freed()
