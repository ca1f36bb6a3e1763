"""Fixtures: real PostgreSQL servers (PG_BINDIR picks the build), and an exporter to scrape.

The helpers the tiers share are in the support package (tests/support)."""

import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import REPO, fresh_database

# The programs the tests drive (promtool, prometheus, amtool, pgbouncer...) are found in the
# checkout's .cache/tools first, where `make test` unpacks them (.ci/install-tools.sh) and puts
# them first on PATH; a bare pytest looks there first too.
TOOLS_BIN = REPO / ".cache" / "tools" / "bin"
if str(TOOLS_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join(filter(None, (str(TOOLS_BIN), os.environ.get("PATH"))))


def _start(**kwargs: Any) -> LocalPostgres:
    server = LocalPostgres(settings={"track_io_timing": "on"}, **kwargs)
    server.start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One server shared by the tests that do not stop it."""
    server = _start()
    yield server
    server.cleanup()


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A server of the test's own, for tests that stop, restart or exhaust it."""
    server = _start()
    yield server
    server.cleanup()


@pytest.fixture
def run_exporter() -> Iterator[Callable[[Config], Exporter]]:
    """Start an in-process exporter on a free port; stopped when the test ends."""
    started: list[Exporter] = []

    def start(config: Config) -> Exporter:
        exporter = Exporter(config, listen_address="127.0.0.1:0")
        exporter.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture
def database(postgres: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database on the shared server, dropped after the test."""
    with fresh_database(postgres) as name:
        yield name


@pytest.fixture
def other_database(postgres: LocalPostgres) -> Iterator[str]:
    """A second fresh database: the healthy neighbour of the one a test plants a problem in."""
    with fresh_database(postgres) as name:
        yield name
