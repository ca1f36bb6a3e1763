"""WAL archiving: successes and failures of archive_command are counted."""

from collections.abc import Iterator

import psycopg
import pytest

from exporter.collection import run_once
from exporter.demo.embedded import LocalPostgres
from support import Samples, exporter_config, parse_exposition, value, wait_for


@pytest.fixture
def failing_archiver() -> Iterator[LocalPostgres]:
    server = LocalPostgres(
        settings={"archive_mode": "on", "archive_command": "false", "wal_level": "replica"}
    )
    server.start()
    yield server
    server.cleanup()


def collect(server: LocalPostgres) -> Samples:
    return parse_exposition(run_once(exporter_config(server.dsn())).body.decode())


def test_archiving_off_by_default(postgres: LocalPostgres) -> None:
    samples = collect(postgres)
    assert value(samples, "pg_archiver_enabled") == 0
    assert value(samples, "pg_archiver_failed_total") == 0


def test_failing_archive_command_is_counted(failing_archiver: LocalPostgres) -> None:
    with psycopg.connect(failing_archiver.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT generate_series(1, 1000) AS i")
        conn.execute("SELECT pg_switch_wal()")

    def failures() -> Samples | None:
        samples = collect(failing_archiver)
        failed = value(samples, "pg_archiver_failed_total")
        return samples if failed else None

    samples = wait_for(failures, what="archive failures counted")
    assert value(samples, "pg_archiver_enabled") == 1
    assert value(samples, "pg_archiver_archived_total") == 0
    assert value(samples, "pg_archiver_last_failed_timestamp_seconds")
