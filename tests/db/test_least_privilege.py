"""The recommended role, a plain member of pg_monitor: every collector works or says why not."""

from collections.abc import Iterator

import psycopg
import pytest

from exporter.collection import run_once
from exporter.demo.embedded import LocalPostgres
from support import Samples, exporter_config, parse_exposition


@pytest.fixture
def monitor_dsn(postgres: LocalPostgres, database: str) -> Iterator[str]:
    """A pg_monitor-only role, and a database whose objects belong to someone else."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for role in ("lp_monitor", "lp_owner"):
            conn.execute(f"DROP OWNED BY {role}" if _role_exists(conn, role) else "SELECT 1")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("CREATE ROLE lp_owner LOGIN")
        conn.execute("CREATE ROLE lp_monitor LOGIN IN ROLE pg_monitor")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO lp_owner')
    with psycopg.connect(postgres.dsn(database), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SET ROLE lp_owner")
        conn.execute("CREATE TABLE orgs (id bigserial PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, org_id bigint REFERENCES orgs,"
            " email text UNIQUE, created timestamptz DEFAULT now())"
        )
        conn.execute("INSERT INTO orgs (name) SELECT 'org' || i FROM generate_series(1, 200) i")
        conn.execute(
            "INSERT INTO users (org_id, email) SELECT 1 + i % 200, 'u' || i || '@x'"
            " FROM generate_series(1, 2000) i"
        )
        conn.execute("ANALYZE")
    yield postgres.dsn(database, user="lp_monitor")
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO postgres')


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return bool(row and row[0])


def collector_outcomes(samples: Samples) -> dict[str, tuple[float, str, float]]:
    """collector -> (up, unavailable reason, errors)."""
    up = {
        dict(ls)["collector"]: v
        for (n, ls), v in samples.items()
        if n == "pg_exporter_collector_up"
    }
    errors = {
        dict(ls)["collector"]: v
        for (n, ls), v in samples.items()
        if n == "pg_exporter_collector_errors_total"
    }
    reasons = {
        dict(ls)["collector"]: dict(ls)["reason"]
        for (n, ls), v in samples.items()
        if n == "pg_exporter_collector_available" and v == 0
    }
    return {c: (up[c], reasons.get(c, ""), errors.get(c, 0)) for c in up}


def test_every_collector_works_or_says_why(monitor_dsn: str) -> None:
    config = exporter_config(monitor_dsn, interval="1m")
    enabled = tuple(
        c.model_copy(update={"spec": c.spec.model_copy(update={"enabled": True})})
        for c in config.catalogue
        if c.spec.target_type == "postgres"
    )
    samples = parse_exposition(
        run_once(config.model_copy(update={"catalogue": enabled})).body.decode()
    )
    outcomes = collector_outcomes(samples)
    assert set(outcomes) == {c.name for c in enabled}
    for name, (up, reason, errors) in outcomes.items():
        assert errors == 0, f"{name} failed under pg_monitor"
        assert up == 1 or reason, f"{name} neither worked nor said why"
