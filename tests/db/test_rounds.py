"""Rounds of visits: one login per database for every per-database collector, at a rate.

The server counts the sessions each database had (pg_stat_database.sessions): that is what a
DBA sees of the exporter's logins, so the tests read it there.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, fresh_database, scrape, value, wait_for

pytestmark = pytest.mark.any_major

# The built-in per-database collectors that need nothing installed, every second.
PER_DATABASE = ("tables", "indexes", "statio", "sequences", "schema")


@pytest.fixture
def three_databases(postgres: LocalPostgres) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(fresh_database(postgres)) for _ in range(3)]


def sessions(postgres: LocalPostgres, databases: list[str]) -> dict[str, int]:
    """Sessions each database has had, as the server counts them."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)",
            [databases],
        ).fetchall()
    return {datname: count for datname, count in rows}


def visiting(dsn: str, databases: list[str], **target: object) -> Config:
    """Our per-database collectors every second, on the own database and `databases`."""
    config = exporter_config(
        dsn,
        collectors={
            **{name: {"interval": "1s", "timeout": "1s"} for name in PER_DATABASE},
            # Their first runs, held back at start, would make a second round of logins.
            **{name: {"enabled": False} for name in ("bloat", "index_health")},
        },
        targets=[
            {
                "name": "pg",
                "dsn": dsn,
                "connect_timeout": "2s",
                "databases": {"include": ["postgres", *databases]},
                **target,
            }
        ],
    )
    return config


def test_each_database_gets_one_login_a_round_and_logins_keep_to_their_rate(
    postgres: LocalPostgres,
    three_databases: list[str],
    run_exporter: Callable[[Config], Exporter],
) -> None:
    """Five collectors, three other databases, 60 logins a minute allowed: each round logs in
    once per database for all five (not five times), and rounds come 3 s apart, the spacing
    three logins need; the collectors' published interval says so."""
    before = sessions(postgres, three_databases)
    started = time.monotonic()
    exporter = run_exporter(visiting(postgres.dsn(), three_databases, visit_logins_per_minute=60))

    def new_sessions() -> dict[str, int]:
        now = sessions(postgres, three_databases)
        return {db: now[db] - before[db] for db in three_databases}

    wait_for(lambda: min(new_sessions().values()) >= 3, timeout=60, what="three rounds of visits")
    elapsed = time.monotonic() - started
    logins = sum(new_sessions().values())
    # At most one login a second, besides the first round (which no spacing precedes).
    assert logins <= elapsed + 3, (logins, elapsed)
    samples = scrape(exporter.server.port)
    for name in PER_DATABASE:
        interval = value(samples, "pg_exporter_collector_interval_seconds", collector=name)
        assert interval == pytest.approx(3.0), name  # three logins at one a second
        assert value(samples, "pg_exporter_collector_up", collector=name) == 1, name
    # Every collector ran in every database it visits, from the one session.
    for database in three_databases:
        assert value(samples, "pg_schema_tables", datname=database) is not None


def test_a_collector_failing_in_a_database_keeps_the_others_from_nothing(
    postgres: LocalPostgres,
    three_databases: list[str],
    run_exporter: Callable[[Config], Exporter],
) -> None:
    """Two collectors share each visit; one fails in one database (a statement error inside
    the shared session): the other still gets every database, the first every other one."""
    broken, *fine = three_databases
    with psycopg.connect(postgres.dsn(dbname=broken), autocommit=True) as conn:
        conn.execute("CREATE TABLE not_a_number (v text)")
        conn.execute("INSERT INTO not_a_number VALUES ('x')")
    for database in fine:
        with psycopg.connect(postgres.dsn(dbname=database), autocommit=True) as conn:
            conn.execute("CREATE TABLE not_a_number (v text)")
            conn.execute("INSERT INTO not_a_number VALUES ('1')")
    strict = {
        "help": "Fails where the text is not a number.",
        "scope": "database",
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT v::int AS v FROM not_a_number", "metrics": {"v": "gauge"}}],
    }
    steady = {
        "help": "Works everywhere.",
        "scope": "database",
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT 1 AS here", "metrics": {"here": "gauge"}}],
    }
    config = exporter_config(
        postgres.dsn(),
        collectors={"a_strict": strict, "b_steady": steady},
        targets=[
            {
                "name": "pg",
                "dsn": postgres.dsn(),
                "connect_timeout": "2s",
                "databases": {"include": three_databases},
            }
        ],
    )
    exporter = run_exporter(config)

    def published() -> bool:
        samples = scrape(exporter.server.port)
        return all(
            value(samples, "pg_b_steady_here", datname=db) == 1 for db in three_databases
        ) and all(value(samples, "pg_a_strict_v", datname=db) == 1 for db in fine)

    wait_for(published, what="both collectors' samples of every database they could read")
    samples = scrape(exporter.server.port)
    assert value(samples, "pg_a_strict_v", datname=broken) is None
    assert value(samples, "pg_exporter_collector_up", collector="a_strict") == 0
    assert value(samples, "pg_exporter_collector_up", collector="b_steady") == 1


def test_held_back_first_runs_follow_the_prompt_ones_at_once(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """The slower per-database collectors (bloat, index_health: 15 min) have their first run
    once the prompt ones had theirs, in the same round's wake, not at the round's next tick
    (15 s, the probes' interval, here)."""
    # A prompt per-database collector that ends last: the slower ones are let go while the
    # round that runs it still runs, so a nudge to run the round again may find it busy (a
    # race the fleet benchmark lost, with 15 s to the next tick); the round runs them itself.
    last = {
        "help": "Slow, and of a minute.",
        "scope": "database",
        "interval": "60s",
        "timeout": "5s",
        "queries": [{"sql": "SELECT 1 AS here FROM pg_sleep(2)", "metrics": {"here": "gauge"}}],
    }
    config = exporter_config(
        postgres.dsn(),
        interval="15s",
        collectors={"zz_last": last},
        # The own database only: the round's length must not depend on the server's others.
        targets=[{"name": "pg", "dsn": postgres.dsn(), "databases": {"include": ["postgres"]}}],
    )
    exporter = run_exporter(config)
    slower = ("bloat", "index_health", "sequences", "schema")

    def all_ran() -> bool:
        samples = scrape(exporter.server.port)
        return all(
            value(samples, "pg_exporter_collector_up", collector=name) is not None
            for name in slower
        )

    wait_for(all_ran, timeout=10, what="the slower collectors' first runs, before a tick")
