"""The built-in and custom collectors against a real PostgreSQL."""

import re
from collections.abc import Iterator

import psycopg
import psycopg.sql
import pytest
import yaml

from exporter.collection import run_once
from exporter.config import DatabaseFilter, parse_config
from exporter.demo.embedded import LocalPostgres
from support import (
    REPO,
    Samples,
    collector_states,
    enabled_postgres_collectors,
    exporter_config,
    names,
    parse_exposition,
    value,
    wait_for,
)


@pytest.fixture
def idle_in_transaction(postgres: LocalPostgres) -> Iterator[None]:
    """A session left idle inside an open transaction, as a forgetful application would."""
    with psycopg.connect(postgres.dsn(), application_name="forgetful-app") as conn:
        conn.execute("SELECT 1")  # opens the transaction and leaves it open
        yield


def test_database_statistics(postgres: LocalPostgres) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS stats_check")
        conn.execute("CREATE DATABASE stats_check")
    with psycopg.connect(postgres.dsn("stats_check")) as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
            conn.commit()
        conn.execute("SELECT 1")
        conn.rollback()

    def collected() -> Samples | None:
        # Before PostgreSQL 15 the statistics collector receives counts asynchronously.
        samples = parse_exposition(run_once(exporter_config(postgres.dsn())).body.decode())
        commits = value(samples, "pg_database_xact_commit_total", datname="stats_check")
        return samples if commits is not None and commits >= 5 else None

    samples = wait_for(collected, what="5 commits counted")
    rollbacks = value(samples, "pg_database_xact_rollback_total", datname="stats_check")
    assert rollbacks is not None and rollbacks >= 1
    assert value(samples, "pg_database_blks_hit_total", datname="stats_check") is not None
    size = value(samples, "pg_database_size_bytes", datname="stats_check")
    assert size is not None and size > 1_000_000  # even an empty database has a few MB of catalog
    if postgres.version_num() >= 140000:
        sessions = value(samples, "pg_database_sessions_total", datname="stats_check")
        assert sessions is not None and sessions >= 1
    else:
        assert "pg_database_sessions_total" not in names(samples)


def test_connections_by_state(postgres: LocalPostgres, idle_in_transaction: None) -> None:
    samples = parse_exposition(run_once(exporter_config(postgres.dsn())).body.decode())
    # By application_name: the exporter's own sessions may be between two queries of a
    # collector run, idle in transaction for a moment, when the snapshot is taken.
    idle_tx = value(
        samples,
        "pg_connections_backends",
        state="idle in transaction",
        datname="postgres",
        application_name="forgetful-app",
    )
    assert idle_tx == 1
    max_connections = value(samples, "pg_connections_max", target="pg")
    with psycopg.connect(postgres.dsn()) as conn:
        expected = conn.execute("SHOW max_connections").fetchone()
    assert expected is not None and max_connections == int(expected[0])
    assert value(samples, "pg_connections_superuser_reserved") is not None


def test_every_collector_runs_without_error(postgres: LocalPostgres) -> None:
    samples = parse_exposition(run_once(exporter_config(postgres.dsn())).body.decode())
    assert value(samples, "pg_up", target="pg") == 1
    states = collector_states(samples)
    assert set(states) == enabled_postgres_collectors()
    failing = {name: v for name, v in states.items() if v != 1}
    assert not failing, f"collectors not up: {failing}"


def test_exporter_sessions_are_read_only_and_named(postgres: LocalPostgres) -> None:
    probe = {
        "help": "What the exporter's own session looks like.",
        "queries": [
            {
                "sql": "SELECT current_setting('default_transaction_read_only') = 'on' AS read_only,"
                " current_setting('application_name') AS app,"
                " current_setting('lock_timeout') AS lock_timeout,"
                " current_setting('statement_timeout') AS statement_timeout,"
                " current_setting('jit') AS jit,"
                " current_setting('max_parallel_workers_per_gather') AS parallel, 1 AS seen",
                "metrics": {
                    "read_only": "gauge",
                    "app": "label",
                    "lock_timeout": "label",
                    "statement_timeout": "label",
                    "jit": "label",
                    "parallel": "label",
                    "seen": "gauge",
                },
            }
        ],
        "timeout": "3s",
    }
    config = exporter_config(postgres.dsn(), collectors={"session_probe": probe})
    samples = parse_exposition(run_once(config).body.decode())
    assert value(samples, "pg_session_probe_read_only") == 1
    assert (
        value(
            samples,
            "pg_session_probe_seen",
            app="pg-health-exporter",
            lock_timeout="1s",
            statement_timeout="3s",
            # No compiling and no worker processes for a catalog query (sessions.py).
            jit="off",
            parallel="0",
        )
        == 1
    )


def test_custom_collector_cannot_write(postgres: LocalPostgres) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS write_target (x int)")
    writer = {
        "help": "Tries to write.",
        "queries": [
            {
                "sql": "WITH w AS (INSERT INTO write_target VALUES (1) RETURNING x) "
                "SELECT count(*) AS n FROM w",
                "metrics": {"n": "gauge"},
            }
        ],
    }
    config = exporter_config(postgres.dsn(), collectors={"writer": writer})
    samples = parse_exposition(run_once(config).body.decode())
    assert value(samples, "pg_exporter_collector_up", collector="writer") == 0
    assert value(samples, "pg_exporter_collector_errors_total", collector="writer") == 1
    assert "pg_writer_n" not in names(samples)
    assert value(samples, "pg_exporter_collector_up", collector="database") == 1
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM write_target").fetchone()
    assert row == (0,)


def test_collector_unavailable_when_extension_missing(postgres: LocalPostgres) -> None:
    needs = {
        "help": "Needs an extension nobody installed.",
        "requires": {"extensions": ["pgstattuple"]},
        "queries": [{"sql": "SELECT 1 AS x", "metrics": {"x": "gauge"}}],
    }
    config = exporter_config(postgres.dsn(), collectors={"needs_ext": needs})
    samples = parse_exposition(run_once(config).body.decode())
    reasons = [
        dict(labels)["reason"]
        for (name, labels), v in samples.items()
        if name == "pg_exporter_collector_available" and ("collector", "needs_ext") in labels
    ]
    assert reasons == ["extension pgstattuple not installed (CREATE EXTENSION)"]
    assert value(samples, "pg_exporter_collector_errors_total", collector="needs_ext") == 0


def test_prisma_example_from_config_yaml(postgres: LocalPostgres) -> None:
    """The commented example in config.yaml works when uncommented."""
    text = (REPO / "config.yaml").read_text()
    block = re.search(r"^  # prisma_migrations:\n(?:  #.*\n)+", text, re.M)
    assert block is not None
    example = "\n".join(line.replace("  # ", "  ", 1) for line in block.group(0).splitlines())
    example = example.replace('["app.*"]', '["prisma_app"]')
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS prisma_app")
        conn.execute("CREATE DATABASE prisma_app")
    with psycopg.connect(postgres.dsn("prisma_app")) as conn:
        conn.execute(
            "CREATE TABLE _prisma_migrations (id text PRIMARY KEY, migration_name text,"
            " logs text, started_at timestamptz DEFAULT now(), finished_at timestamptz,"
            " rolled_back_at timestamptz, applied_steps_count int DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO _prisma_migrations (id, migration_name, logs, finished_at) VALUES"
            " ('1', 'init', NULL, now()), ('2', 'add_users', 'ERROR: boom', NULL),"
            " ('3', 'add_index', NULL, NULL)"
        )
    collectors = yaml.safe_load("collectors:\n" + example)["collectors"]
    config = parse_config(
        {"targets": [{"name": "pg", "dsn": postgres.dsn()}], "collectors": collectors}
    )
    samples = parse_exposition(run_once(config).body.decode())
    assert value(samples, "pg_prisma_migrations_failed", datname="prisma_app") == 1
    assert value(samples, "pg_prisma_migrations_pending", datname="prisma_app") == 1
    assert value(samples, "pg_prisma_migrations_last_finished_timestamp_seconds") is not None
    assert value(samples, "pg_exporter_collector_up", collector="prisma_migrations") == 1


def test_per_database_collector_visits_each_database(postgres: LocalPostgres) -> None:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for db in ("visit_a", "visit_b"):
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")
    where = {
        "help": "Which database am I in?",
        "scope": "database",
        "databases": ["visit_.*"],
        "queries": [
            {
                "sql": "SELECT current_database() AS db, 1 AS here",
                "metrics": {"db": "label", "here": "gauge"},
            }
        ],
    }
    config = exporter_config(postgres.dsn(), collectors={"where": where})
    samples = parse_exposition(run_once(config).body.decode())
    found = {
        (dict(labels)["datname"], dict(labels)["db"])
        for (name, labels), _ in samples.items()
        if name == "pg_where_here"
    }
    assert found == {("visit_a", "visit_a"), ("visit_b", "visit_b")}


# Names a regular expression or a connection string could mistake for something else.
AWKWARD_NAMES = ("line\nbreak", 'quote\'s "double"', "re.gex*[x]+(y)", "back\\slash =x")


def test_every_database_is_visited_whatever_its_name(postgres: LocalPostgres) -> None:
    """With no filter (every database), each name is taken literally: newlines, quotes and
    regular-expression characters included; the label carries the name as it is."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name in AWKWARD_NAMES:
            ident = psycopg.sql.Identifier(name)
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(ident))
    where = {
        "help": "Which database am I in?",
        "scope": "database",
        "queries": [
            {
                "sql": "SELECT current_database() AS db, 1 AS here",
                "metrics": {"db": "label", "here": "gauge"},
            }
        ],
    }
    try:
        config = exporter_config(postgres.dsn(), collectors={"where": where})
        samples = parse_exposition(run_once(config).body.decode())
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            for name in AWKWARD_NAMES:
                ident = psycopg.sql.Identifier(name)
                conn.execute(psycopg.sql.SQL("DROP DATABASE {}").format(ident))
    visited = {
        dict(labels)["datname"]: dict(labels)["db"]
        for (name, labels), _ in samples.items()
        if name == "pg_where_here"
    }
    for name in AWKWARD_NAMES:
        assert visited.get(name) == name, (name, sorted(visited))
    # A pattern that does match such a name visits it too; one that does not, does not.
    only = DatabaseFilter(include=("line.break", r"re\.gex.*"), exclude=(".*x.*",))
    assert only.allows("line\nbreak") and not only.allows("re.gex*[x]+(y)")
