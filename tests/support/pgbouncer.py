"""A throwaway PgBouncer in front of a LocalPostgres, for tests.

The real binary (Debian's `pgbouncer` package, which `make test` unpacks into .cache/tools;
PGBOUNCER names another) runs in the foreground on a free 127.0.0.1 port with a config in its
own temporary directory. PgBouncer refuses to run as root, so as root it switches to `nobody`
(or PG_RUN_AS) itself (`-u`), like the PostgreSQL fixtures run as that user; the binary need
not be reachable by that user (a checkout under root's 0700 home). Readiness is awaited by
connecting with a deadline; stop() shuts it down and cleanup() also removes the directory.

Users (trust authentication, listed in the auth_file): `postgres` is an admin of the console
and reaches PostgreSQL as its superuser; `monitor` is only a stats user, the least privilege
that can read SHOW POOLS / STATS / DATABASES, as a monitoring role should.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.conninfo import make_conninfo

from exporter.demo.embedded import LocalPostgres
from support import free_port

ADMIN_USER = "postgres"
STATS_USER = "monitor"

_START_TIMEOUT_SECONDS = 30.0
_PORT_RETRIES = 3


class PgBouncerError(Exception):
    """PgBouncer did not start or stop; the message carries the tail of its log."""


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    configured = os.environ.get("PGBOUNCER")
    if configured:
        return configured
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user PgBouncer runs as when we are root."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(os.environ.get("PG_RUN_AS") or "nobody")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop PgBouncer whatever its version; never waits without a deadline.

    Before 1.23 SIGTERM shuts down at once; from 1.23 the first SIGTERM waits for clients to
    leave and a second one shuts down at once. SIGKILL is the last resort.
    """
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def _finalize(process_box: list[subprocess.Popen[bytes]], directory: Path) -> None:
    # weakref.finalize must not reference the LocalPgBouncer itself.
    for process in process_box:
        _terminate(process)
    shutil.rmtree(directory, ignore_errors=True)


class LocalPgBouncer:
    """One PgBouncer pooling connections to `postgres`.

    `databases` maps each PgBouncer database name to the rest of its connection string, e.g.
    ``{"app": "dbname=app pool_size=1"}``; host and port of `postgres` are filled in.
    `settings` are added to (or override) the [pgbouncer] section.
    """

    def __init__(
        self,
        postgres: LocalPostgres,
        databases: Mapping[str, str],
        *,
        settings: Mapping[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or pgbouncer_binary()
        if found is None:
            raise PgBouncerError(
                "pgbouncer is not installed: `make test` unpacks it into .cache/tools "
                "(or run .ci/install-tools.sh pgbouncer)"
            )
        self.binary = found
        self.postgres = postgres
        self.databases = dict(databases)
        self.settings = dict(settings or {})
        self.port = free_port()
        self._run_as = _run_as()
        self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        if self._run_as is not None:
            os.chown(self.directory, self._run_as.pw_uid, self._run_as.pw_gid)
        self.directory.chmod(0o700)
        self.log_path = self.directory / "pgbouncer.log"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _finalize, self._processes, self.directory)

    def __repr__(self) -> str:
        return f"<LocalPgBouncer port={self.port} dir={str(self.directory)!r}>"

    # -- connecting ------------------------------------------------------------------------

    def dsn(self, dbname: str = "pgbouncer", user: str = STATS_USER, **extra: Any) -> str:
        """A libpq connection string through PgBouncer (default: its console, as stats user)."""
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user, **extra)

    def admin(self, command: str) -> None:
        """Run a console command (PAUSE, DISABLE, RELOAD, ...) as the admin user."""
        with psycopg.connect(self.dsn(user=ADMIN_USER), autocommit=True, connect_timeout=5) as conn:
            conn.execute(command.encode())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start PgBouncer and return once its console accepts a connection."""
        if not self._finalizer.alive:
            raise PgBouncerError(f"{self!r} was cleaned up; create a new one")
        if self.is_running():
            return
        for attempt in range(1, _PORT_RETRIES + 1):
            self._write_config()
            try:
                self._launch_and_wait()
            except PgBouncerError as exc:
                if "in use" not in str(exc) or attempt == _PORT_RETRIES:
                    raise
                self.port = free_port()  # taken before PgBouncer bound it
            else:
                return

    def stop(self) -> None:
        """Shut PgBouncer down (its clients are disconnected) and wait until it is gone."""
        while self._processes:
            _terminate(self._processes.pop())

    def is_running(self) -> bool:
        return any(p.poll() is None for p in self._processes)

    def cleanup(self) -> None:
        """Stop it and remove its directory. Safe to call more than once."""
        self._finalizer()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        target = f"host=127.0.0.1 port={self.postgres.port}"
        databases = [f"{name} = {target} {rest}".rstrip() for name, rest in self.databases.items()]
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",  # TCP only: no socket files to clean up or collide
            "auth_type": "trust",
            "auth_file": str(self.directory / "userlist.txt"),
            "admin_users": ADMIN_USER,
            "stats_users": STATS_USER,
            "pool_mode": "session",
            "default_pool_size": "5",
            "max_client_conn": "100",
            # Averages in SHOW STATS are recomputed every stats_period seconds.
            "stats_period": "1",
            # No test client may wait for a server forever.
            "query_wait_timeout": "30",
            **self.settings,
        }
        ini = [
            "[databases]",
            *databases,
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        self._write_file("pgbouncer.ini", "\n".join(ini) + "\n")
        users = (ADMIN_USER, STATS_USER)
        self._write_file("userlist.txt", "".join(f'"{user}" ""\n' for user in users))

    def _write_file(self, name: str, text: str) -> None:
        path = self.directory / name
        path.write_text(text, encoding="utf-8")
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        path.chmod(0o600)

    def _launch_and_wait(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [self.binary, str(self.directory / "pgbouncer.ini")]
        if self._run_as is not None:
            argv[1:1] = ["-u", self._run_as.pw_name]  # it switches after loading its libraries
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a Ctrl-C of pytest is not also PgBouncer's
            )
        self._processes.append(process)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.dsn(), autocommit=True, connect_timeout=2).close()
            except psycopg.OperationalError as exc:
                last_error = str(exc).strip()
            else:
                return
            # Waiting on the process is the pause between attempts, and notices it exiting.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            if process.poll() is not None:
                self._processes.remove(process)
                raise PgBouncerError(
                    f"pgbouncer exited with {process.returncode} on port {self.port}:\n"
                    f"{self._log_tail(offset)}"
                )
        self.stop()
        raise PgBouncerError(
            f"pgbouncer did not accept connections within {_START_TIMEOUT_SECONDS:.0f}s "
            f"({last_error}):\n{self._log_tail(offset)}"
        )

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(lines[-30:]) or "(log is empty)"
