"""Connections to one target: a small pool for its own database, bounded visits to the others.

Every session is read-only and identifies itself, with a short lock_timeout so the exporter never
queues behind DDL, and idle_in_transaction_session_timeout so a stuck exporter cannot hold a
snapshot. Every session reads text as UTF-8 whatever the database's encoding: the server
converts from LATIN1, EUC_JP and the others (client_encoding UTF8). A SQL_ASCII database's
bytes are what they are: with client_encoding UTF8 the server would fail a whole statement on
one byte that is not UTF-8, so there the session asks for SQL_ASCII (nothing converted,
nothing checked). And shared catalogues (pg_database) hold names in the encoding of whichever
database created them, so bytes that are not UTF-8 can come from any database. Those are read as
`\\xNN` escapes (Python's backslashreplace: lossless for every byte, though a name holding a
literal `\\xNN` reads the same), never as an error and never as bytes.

The total number of connections to a target never exceeds its `max_connections`: the pool
gets all but one of them, visits to other databases share the last one, and the probe's new
login takes that slot first (or an idle pooled connection's place).
"""

import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.abc import Buffer, PQGen
from psycopg.adapt import Loader
from psycopg.pq import Format

from exporter.config import TargetConfig
from exporter.errors import ConnectFailed, PoolBusy, first_line
from exporter.targets.connection_cap import ConnectionCap
from exporter.targets.pool import (
    PoolClosed,
    PoolConnectFailed,
    PoolTimeout,
    SessionPool,
    check_connection,
)
from exporter.targets.watchdog import Watchdog

APPLICATION_NAME = "pg-health-exporter"
STOPPING = "the exporter is stopping"
# Beyond a statement's own timeout, how long a reply may take before the session is cut.
REPLY_GRACE_SECONDS = 2.0

_WATCHDOG = Watchdog("session-watchdog")
_Result = TypeVar("_Result")
# `deadline`: a monotonic time that no wait for the server on this thread may pass.
_THREAD = threading.local()


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Every round trip on this thread (the pool's check included) ends within `seconds`."""
    previous: float | None = getattr(_THREAD, "deadline", None)
    deadline = time.monotonic() + seconds
    _THREAD.deadline = deadline if previous is None else min(previous, deadline)
    try:
        yield
    finally:
        _THREAD.deadline = previous


def session_options(target: TargetConfig) -> dict[str, Any]:
    """libpq keyword arguments that every session of the exporter uses."""
    if target.type == "pgbouncer":
        # The admin console takes no `options` and no transactions; SHOW is all it can do.
        return {
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, round(target.connect_timeout)),
            "autocommit": True,
            **_dead_peer_detection(target),
        }
    settings = {
        "default_transaction_read_only": "on",
        # Catalog queries over thousands of relations pass JIT's cost threshold, and compiling
        # them costs more than running them (hundreds of ms per run at 2,000 tables).
        "jit": "off",
        # A catalog query needs no worker processes: they come out of the server's
        # max_parallel_workers, which its own queries share, and the clock that the database
        # time budget reads does not see their time.
        "max_parallel_workers_per_gather": "0",
        # The probe and every collector set a statement_timeout of their own (SET LOCAL).
        "lock_timeout": f"{int(target.lock_timeout * 1000)}ms",
        "idle_in_transaction_session_timeout": (
            f"{int(target.idle_in_transaction_timeout * 1000)}ms"
        ),
    }
    ours = " ".join(f"-c {name}={value}" for name, value in settings.items())
    # Keep the DSN's own options (search_path, a cloud provider's endpoint=...); ours come last
    # so they win where both set the same thing.
    theirs = target.dsn_params.get("options")
    return {
        "application_name": APPLICATION_NAME,
        "client_encoding": "UTF8",  # see the module's doc
        "connect_timeout": max(1, round(target.connect_timeout)),
        "options": f"{theirs} {ours}" if theirs else ours,
        "autocommit": False,
        **_dead_peer_detection(target),
    }


def _dead_peer_detection(target: TargetConfig) -> dict[str, Any]:
    """TCP settings so a host that vanishes (no reset) fails a query within about a minute.

    statement_timeout is enforced by the server; with the server gone only the client's TCP
    stack can notice, and by default that takes from 15 minutes to 2 hours.
    """
    return {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": int((target.connect_timeout + 60) * 1000),
    }


class _Utf8Text(Loader):
    """Text as UTF-8, bytes that are not as `\\xNN` (see the module's doc)."""

    def load(self, data: Buffer) -> str:
        return str(data, "utf-8", "backslashreplace")


class _Utf8BinaryText(_Utf8Text):
    format = Format.BINARY


# Every type psycopg reads as str; the unknown oid (0) stands for every type it has no loader
# for (regclass, regrole, an extension's...), which it reads as text.
_TEXT_TYPES = ("text", "varchar", "bpchar", "name", '"char"')


class BoundedConnection(psycopg.Connection[Any]):
    """A session whose every wait for the server ends within `reply_limit` seconds.

    The server enforces statement_timeout, but cannot when it (or a proxy in between) stops
    answering while TCP stays up; TCP keepalives and tcp_user_timeout do not fire either,
    since the peer still acknowledges. Each round trip (a statement, COMMIT, the pool's check)
    is timed; one that overruns has its socket shut down, which ends libpq's wait with an
    error, and the session is then discarded.
    """

    reply_limit: float = 30.0  # seconds; set per use by TargetConnections.connection()
    severed: bool = False  # cut for want of an answer
    waiting_since: float | None = None  # monotonic: since when a reply is awaited, if one is
    # Told once the session is closed (the process's cap counts it until then).
    on_close: Callable[[psycopg.Connection[Any]], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in _TEXT_TYPES:
            self.adapters.register_loader(name, _Utf8Text)
            self.adapters.register_loader(name, _Utf8BinaryText)
        self.adapters.register_loader(0, _Utf8Text)

    def wait(self, gen: PQGen[_Result], *args: Any, **kwargs: Any) -> _Result:
        limit = self.reply_limit
        deadline: float | None = getattr(_THREAD, "deadline", None)
        if deadline is not None:
            limit = max(0.01, min(limit, deadline - time.monotonic()))
        token = _WATCHDOG.arm(limit, self.sever)
        self.waiting_since = time.monotonic()
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError:
            if self.severed:
                raise psycopg.OperationalError(
                    f"the server did not answer within {limit:g}s: session closed"
                ) from None
            raise
        finally:
            self.waiting_since = None
            _WATCHDOG.disarm(token)

    def close(self) -> None:
        super().close()
        self.tell_closed()

    def tell_closed(self) -> None:
        """Tell on_close, once."""
        told, self.on_close = self.on_close, None
        if told is not None:
            told(self)

    def sever(self) -> None:
        """End the session now: whatever waits on it fails at once (any thread may call it)."""
        self.severed = True
        try:
            # A duplicate of libpq's descriptor: shutting it down ends the connection for
            # both, and closing the duplicate leaves libpq's own descriptor for libpq to close.
            with socket.socket(fileno=os.dup(self.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass  # already closed


class _Freed:
    """A count of the times a pooled session, a pool's place or the visiting slot may have
    come free: a first run waits for whichever comes first (see TargetConnections._pooled).
    The count is read before trying both, so a release in between is never missed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self.waiting = 0

    def tell(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def seen(self) -> int:
        with self._cond:
            return self._count

    def wait(self, seen: int, timeout: float) -> None:
        """Until something was freed after `seen` was read, or `timeout` seconds."""
        with self._cond:
            self.waiting += 1
            try:
                self._cond.wait_for(lambda: self._count != seen, timeout)
            finally:
                self.waiting -= 1


class _VisitSlot:
    """The one connection slot for visits, which the probe may claim ahead of visitors.

    The per-database collectors' round (collection.rounds) takes the slot for each database in
    turn; without priority a probe waiting for it could lose every race to the next visit. A
    visit's session closes as the visit ends: a session left open on a database would fail a
    DROP DATABASE (or a CREATE DATABASE from it as a template) there.
    """

    def __init__(self, on_release: Callable[[], None] = lambda: None) -> None:
        self._on_release = on_release
        self._cond = threading.Condition()
        self._held = False
        self._probes_waiting = 0
        # For the self-metrics, in the pool's manner (see stats()).
        self._waiting = 0
        self._taken = 0
        self._queued = 0
        self._timeouts = 0
        self._wait_seconds = 0.0
        self._logins = 0

    def acquire(self, timeout: float, *, probe: bool = False) -> bool:
        """The slot within `timeout`: for the probe (ahead of everyone), or anything else."""
        with self._cond:

            def free() -> bool:
                return not self._held and (probe or not self._probes_waiting)

            if not free() and timeout > 0:  # a try (timeout 0) that fails is no wait
                self._queued += 1
                self._waiting += 1
                self._probes_waiting += int(probe)
                started = time.monotonic()
                try:
                    self._cond.wait_for(free, timeout)
                finally:
                    self._probes_waiting -= int(probe)
                    self._waiting -= 1
                    self._wait_seconds += time.monotonic() - started
                self._timeouts += int(not free())
            if not free():  # (a timed-out wait must leave the holder's claim alone)
                return False
            self._held = True
            self._taken += 1
            return True

    def stats(self) -> dict[str, int]:
        """Counters named like psycopg_pool's get_stats(), with a `visits_` prefix."""
        with self._cond:
            return {
                "visits_waiting": self._waiting,
                "visits_num": self._taken,
                "visits_queued": self._queued,
                "visits_errors": self._timeouts,
                "visits_wait_ms": int(1000 * self._wait_seconds),
                "visits_logins": self._logins,
            }

    def release(self) -> None:
        """Give the slot back."""
        with self._cond:
            self._held = False
            self._cond.notify_all()
        self._on_release()

    def logging_in(self) -> None:
        """The holder logs in to visit another database (counted, whether it succeeds)."""
        with self._cond:
            self._logins += 1


class TargetConnections:
    def __init__(self, target: TargetConfig, cap: ConnectionCap | None = None) -> None:
        self._target = target
        self._kwargs = session_options(target)
        pool_size = target.max_connections - 1  # config guarantees at least 2
        # Every session of the process, all targets together (see connection_cap).
        self._cap = cap if cap is not None else ConnectionCap(None)
        self._freed = _Freed()
        self._visits = _VisitSlot(on_release=self._freed.tell)
        self._lock = threading.Lock()
        self._closing = False
        self._used: set[BoundedConnection] = set()  # sessions jobs hold now: close() cuts them
        # Where the last new login reached the server: (host or socket directory, port).
        self._address: tuple[str, int] | None = None
        # Sessions are opened by the job that needs one (no threads per target), and a broken
        # one (server restart, pg_terminate_backend) is replaced at checkout. A closed one's
        # place is free once its server process has exited (see _close_and_wait).
        self._pool: SessionPool[BoundedConnection] = SessionPool(
            lambda: self._connect(self._target.conninfo(), **self._kwargs),
            max_size=pool_size,
            check=self._check,
            reset=self._between_uses,
            close=_close_and_wait,
            on_free=self._on_free,
        )
        self._cap.add_pool(self._pool)
        # The pool's own round trips (the check at checkout, the rollback on return) get the
        # probe's budget: they are trivial statements.
        self._idle_limit = target.connect_timeout + REPLY_GRACE_SECONDS

    def _on_free(self) -> None:
        """The pool has a session idle or a place free (told under its lock)."""
        self._freed.tell()
        self._cap.freed()

    def _check(self, conn: BoundedConnection) -> None:
        """The pool's test of an idle session at checkout; a broken one is replaced."""
        if self._target.type == "postgres":
            check_connection(conn)
        else:
            _check_console(conn)

    def _between_uses(self, conn: BoundedConnection) -> None:
        conn.reply_limit = self._idle_limit

    def open(self) -> None:
        """Nothing to do ahead of use: the first job to need a session opens it."""

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Open no new session, cut those jobs are using (their waits fail at once) and close
        the pool, without waiting for anything the server does: a frozen or unreachable server
        must not hold up a shutdown or a reload."""
        with self._lock:
            self._closing = True
            used, self._used = list(self._used), set()
        for conn in used:
            conn.sever()
        # A job opening a session meanwhile closes it itself when its connect returns.
        self._pool.close()
        self._cap.remove_pool(self._pool)

    def _check_open(self) -> None:
        if self._closing:
            raise ConnectFailed(STOPPING)

    def _connect(self, conninfo: str, **options: Any) -> BoundedConnection:
        """A new session, unless closing: a job that waited (for the pool, or a connect that
        timed out) must not open one after a shutdown began."""
        self._check_open()
        with self._cap.opening(self._target.connect_timeout) as opened:
            conn = BoundedConnection.connect(conninfo, **options)
            opened(conn)
        conn.on_close = self._cap.closed
        if self._target.type == "postgres":
            conn.reply_limit = self._idle_limit
            try:
                _raw_bytes_from_sql_ascii(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def _in_use(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Track a session while a job holds it, so that close() can cut it."""
        assert isinstance(conn, BoundedConnection)
        with self._lock:
            stopped = self._closing  # while it was being opened
            if not stopped:
                self._used.add(conn)
        if stopped:
            conn.sever()
            raise ConnectFailed(STOPPING)
        try:
            yield
        finally:
            with self._lock:
                self._used.discard(conn)

    @contextmanager
    def connection(
        self, database: str | None = None, *, wait_seconds: float, spare: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A session on the target's own database (None) or on another database.

        `wait_seconds` bounds the wait for a free connection: a job may queue behind another
        job's query, but not forever. With `spare` (a collector's first run, at start), a
        session on the own database takes the visiting slot instead of queueing when no pooled
        connection is idle and no visit holds the slot (see _pooled): two collectors of the own
        database then run at once, still within max_connections.
        """
        # A statement gets its own timeout (at most wait_seconds) to answer, and the grace.
        reply_limit = wait_seconds + self._target.connect_timeout + REPLY_GRACE_SECONDS
        self._check_open()
        if database is None:
            pooled = self._pooled(wait_seconds, spare=spare)
            if pooled is not None:
                try:
                    with self._in_use(pooled):
                        pooled.reply_limit = reply_limit
                        yield pooled
                finally:
                    self._pool.putconn(pooled)
                return
            # (None: a first run has the visiting slot instead, for a session of its own.)
        elif not self._visits.acquire(wait_seconds):
            raise PoolBusy(f"the connection for visiting databases stayed busy {wait_seconds:g}s")
        try:
            if database is not None:
                self._visits.logging_in()
            try:
                conn = self._connect(self._target.conninfo(database), **self._kwargs)
            except psycopg.OperationalError as exc:
                raise ConnectFailed(first_line(exc)) from None
            conn.reply_limit = reply_limit
            try:
                with self._in_use(conn):
                    yield conn
            finally:
                _close_and_wait(conn)
        finally:
            self._visits.release()

    def _pooled(self, wait_seconds: float, *, spare: bool) -> BoundedConnection | None:
        """A pooled session within `wait_seconds`. With `spare`, whichever comes first: a
        pooled session, or the visiting slot (then None, the slot taken).

        Each is tried and taken in one step, never judged from counters first: at start
        every collector's first run asks at once, and two slow ones must not both wait for
        the pool while the slot comes free.
        """
        try:
            if spare:
                return self._session_or_slot(time.monotonic() + wait_seconds)
            return self._pool.getconn(wait_seconds)
        except PoolTimeout:
            raise self._explain_failure(wait_seconds) from None
        except PoolClosed:
            raise ConnectFailed(STOPPING) from None
        except PoolConnectFailed as exc:
            raise ConnectFailed(str(exc)) from None

    @property
    def waiting_for_either(self) -> int:
        """First runs waiting now for a pooled session or the visiting slot."""
        return self._freed.waiting

    def _session_or_slot(self, deadline: float) -> BoundedConnection | None:
        """A pooled session, or None with the visiting slot taken, as soon as either is free
        (a probe waiting for the slot goes first); PoolTimeout at the deadline."""
        while True:
            seen = self._freed.seen()
            conn = self._pool.getconn_now()
            if conn is not None:
                return conn
            if self._visits.acquire(0):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise PoolTimeout("neither a pooled session nor the visiting slot came free")
            self._freed.wait(seen, left)

    def heartbeat(self, seconds: float) -> str | None:
        """Why the server reads as down, if a heartbeat within `seconds` says so; else None.

        The heartbeat is a round trip on an idle pooled session: a protocol Sync (an empty
        pipeline), which the server answers without running a statement, so nothing for
        log_statement or pg_stat_statements. No answer: down (the session is cut). Nothing
        learnt (None): the session failed otherwise (ended by the server or an
        administrator: the probe will tell), or no session is idle, since a job holds it.
        That job may itself be waiting on a frozen server, and would hold the session until
        its own reply limit (12 s and more): so when a session in use has waited longer than
        `seconds` for a reply, the postmaster is asked instead (an SSLRequest: no login, no
        session), and no answer within `seconds` is down too.
        """
        self._check_open()
        conn = self._pool.idle_now()
        if conn is None:
            return self._stuck_and_silent(seconds)
        try:
            with self._in_use(conn):
                conn.reply_limit = seconds
                try:
                    if psycopg.Pipeline.is_supported():
                        with conn.pipeline():
                            pass  # entering and leaving is the Sync's round trip
                    else:  # a libpq before 14: an empty statement instead
                        check_connection(conn)
                except psycopg.Error:
                    if not conn.closed:
                        conn.close()
                    if conn.severed:
                        return (
                            f"no answer within {seconds:g}s on an open session "
                            "(the server, or the network to it, stopped answering)"
                        )
                return None
        finally:
            self._pool.putconn(conn)

    def _stuck_and_silent(self, seconds: float) -> str | None:
        """With no session idle: why the server reads as down, if a session in use has waited
        longer than `seconds` for a reply and the postmaster does not answer either."""
        now = time.monotonic()
        with self._lock:
            waits = [c.waiting_since for c in self._used if c.waiting_since is not None]
        longest = max((now - since for since in waits), default=0.0)
        if longest <= seconds or postmaster_answers(self._address, seconds) is not False:
            return None
        return (
            f"a session has waited {longest:.0f}s for a reply, and a new connection got no "
            f"answer within {seconds:g}s (the server, or the network to it, stopped answering)"
        )

    @contextmanager
    def fresh_session(self, seconds: float) -> Iterator[psycopg.Connection[Any]]:
        """A session logged in just now, for the probe; it and every reply on it within
        `seconds`.

        A pooled session may have logged in an hour ago and may be stuck behind a frozen
        server: only a new login proves that the server answers and still accepts the role
        (a rotated password, a revoked LOGIN, a pg_hba change). It takes the visiting slot
        (ahead of visitors) or an idle pooled connection's place (closed; the pool opens
        another in the background), never a connection beyond max_connections. When every
        session stays busy for half the time, none of them is getting answers either: the
        target is reported down with that reason.
        """
        started = time.monotonic()
        self._check_open()
        with _within(seconds), ExitStack() as slot:
            self._take_a_slot(slot, seconds / 2, reported=seconds)
            left = seconds - (time.monotonic() - started)
            # libpq takes whole seconds, at least 2.
            options = {**self._kwargs, "connect_timeout": max(2, math.ceil(left))}
            try:
                conn = self._connect(self._target.conninfo(), **options)
            except psycopg.errors.ConnectionTimeout:
                raise ConnectFailed(
                    f"no answer to a new connection within {seconds:g}s "
                    "(connection timeout expired)"
                ) from None
            except psycopg.OperationalError as exc:
                raise ConnectFailed(first_line(exc)) from None
            conn.reply_limit = seconds  # and never past the deadline
            self._address = (conn.info.host, conn.info.port)
            try:
                with self._in_use(conn):
                    yield conn
            finally:
                _close_and_wait(conn)

    def _take_a_slot(self, slot: ExitStack, seconds: float, *, reported: float) -> None:
        """Make room for one new session within max_connections, waiting up to `seconds`
        (and as long again for the server to answer, when every session stays busy: the
        probe's whole time, `reported`)."""
        if self._visits.acquire(0, probe=True):
            slot.callback(self._visits.release)
            return
        try:
            # An unopened place in the pool, or an idle session's (closed first).
            if slot.enter_context(self._pool.place(seconds / 2)):
                return
        except PoolClosed:
            raise ConnectFailed(STOPPING) from None
        if self._visits.acquire(seconds / 2, probe=True):
            slot.callback(self._visits.release)
            return
        self._check_open()
        # Every session busy: long statements on a healthy server, or all stuck on a frozen
        # one. The postmaster tells which without a login (no session slot taken).
        busy = f"all {self._target.max_connections} of the exporter's sessions stayed busy"
        if postmaster_answers(self._address, seconds) is False:
            raise ConnectFailed(f"no answer to a new connection within {reported:g}s ({busy})")
        raise PoolBusy(f"{busy} for {seconds:g}s (the server answers: only busy)")

    def stats(self) -> dict[str, int]:
        """The pool's own counters (named as psycopg_pool's get_stats()) and the visiting
        slot's."""
        return {**self._pool.get_stats(), **self._visits.stats()}

    def _explain_failure(self, waited: float) -> ConnectFailed | PoolBusy:
        """Why the pool had nothing for us: the target is down, or only busy.

        The pool only says it timed out; one direct attempt tells which, and why. It borrows
        the visiting slot so that even this attempt stays within max_connections.
        """
        busy = PoolBusy(f"every pooled connection stayed in use for {waited:g}s")
        if not self._visits.acquire(0):
            return busy
        try:
            conn = self._connect(self._target.conninfo(), **self._kwargs)
            _close_and_wait(conn)
            return busy
        except psycopg.Error as exc:
            return ConnectFailed(first_line(exc))
        finally:
            self._visits.release()


# PostgreSQL's SSLRequest code: any postmaster answers it with one byte, before any login.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def postmaster_answers(address: tuple[str, int] | None, seconds: float) -> bool | None:
    """Whether the server at `address` answers an SSLRequest within `seconds`: True, False,
    or None when the address is not known (no login has succeeded yet).

    It proves the server is alive without taking a session: the request is answered ('S' or
    'N') before authentication, and the connection closed then never counts against
    max_connections. A frozen server's kernel accepts the connection, but nothing answers.
    """
    if address is None:
        return None
    host, port = address
    try:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(seconds)
            sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            sock = socket.create_connection((host, port), timeout=seconds)
    except OSError:
        return False
    with sock:
        try:
            sock.sendall(_SSL_REQUEST)
            return len(sock.recv(1)) == 1
        except OSError:
            return False


# How long closing a session waits for its server process to be gone (see _close_and_wait).
CLOSE_WAIT_SECONDS = 0.5


def _close_and_wait(conn: psycopg.Connection[Any]) -> None:
    """Close the session and wait (briefly) until its server process has exited.

    libpq's close only sends the server a Terminate message; the backend goes on counting
    against max_connections (and the role's CONNECTION LIMIT) until it has exited, which
    closes its end of the socket. A session opened in the slot the moment it is released
    would otherwise be the cap plus one on the server, and refused at a role limit equal to
    the cap. A copy of the socket, kept past the close, sees that end of file. The process's
    cap (on_close) is told last, for the same reason.
    """
    told = None
    if isinstance(conn, BoundedConnection):
        told, conn.on_close = conn.on_close, None
    try:
        _close_waiting_for_the_server(conn)
    finally:
        if told is not None:
            told(conn)


def _close_waiting_for_the_server(conn: psycopg.Connection[Any]) -> None:
    if conn.closed:
        return
    try:
        copy = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        conn.close()
        return
    with copy:
        conn.close()
        copy.settimeout(CLOSE_WAIT_SECONDS)
        try:
            while copy.recv(4096):
                pass  # anything still in flight; the server's end of file ends it
        except OSError:
            pass  # timed out (a frozen server), or reset: nothing more to wait for


def _raw_bytes_from_sql_ascii(conn: psycopg.Connection[Any]) -> None:
    """In a SQL_ASCII database, client_encoding SQL_ASCII: see the module's doc."""
    if conn.info.parameter_status("server_encoding") == "SQL_ASCII":
        conn.execute("SET client_encoding TO 'SQL_ASCII'")
        if not conn.autocommit:
            conn.commit()


def _check_console(conn: psycopg.Connection[Any]) -> None:
    """PgBouncer's console rejects check_connection's empty query; SHOW VERSION is as cheap."""
    conn.execute("SHOW VERSION")


def set_statement_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Bound every statement of the current transaction (SET LOCAL: it ends with it)."""
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{int(seconds * 1000)}ms"))
    )
