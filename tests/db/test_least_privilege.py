"""Every collector under three roles on one planted database: a superuser, a member of
pg_monitor (the recommended role) and a plain login role. What a lesser role publishes is what
the superuser publishes, or it is absent with a reason: never a wrong number that looks fine.

The planted database belongs to another role (lp_owner), with other roles' sessions (one idle
in a REPEATABLE READ transaction, holding the xmin horizon), bloat, sequences and statements;
a second database refuses CONNECT to PUBLIC. The exporter's roles do not track their own
statements (pg_stat_statements.track = none), so the statement statistics hold still while
the three collect in turn.
"""

import dataclasses
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from exporter.catalogue import Requirements, builtin_specs
from exporter.collection import run_once
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.report.build import build_report
from exporter.report.checks.base import ident
from exporter.report.findings import Finding
from exporter.targets import ServerFacts
from exporter.targets.sessions import APPLICATION_NAME
from support import Samples, fresh_database, parse_exposition

SUPER, MONITOR, PLAIN, OWNER = "lp_super", "lp_monitor", "lp_plain", "lp_owner"
ROLES = {
    SUPER: "SUPERUSER",
    MONITOR: "IN ROLE pg_monitor",
    PLAIN: "",
    OWNER: "",
}

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class Planted:
    postgres: LocalPostgres
    database: str  # owned by lp_owner, everything planted
    private: str  # CONNECT revoked from PUBLIC

    def config(self, user: str, **collectors: Any) -> Config:
        """Every built-in collector (the opt-in ones too) as `user`, visiting both databases."""
        every = {
            name: {
                "enabled": True,
                **({"params": {"max_statements": 10_000}} if "statement" in name else {}),
            }
            for name, spec in builtin_specs().items()
            if spec.target_type == "postgres"
        }
        include = [re.escape(self.database), re.escape(self.private)]
        return parse_config(
            {
                "targets": [
                    {
                        "name": "pg",
                        "dsn": self.postgres.dsn(self.database, user=user),
                        "connect_timeout": "5s",
                        "databases": {"include": include},
                    }
                ],
                "collectors": every | collectors,
            }
        )


def _drop_roles(conn: Conn) -> None:
    for role in ROLES:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f"REASSIGN OWNED BY {role} TO postgres")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def planted(postgres: LocalPostgres) -> Iterator[Planted]:
    with ExitStack() as stack:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            _drop_roles(conn)
            for role, options in ROLES.items():
                conn.execute(f"CREATE ROLE {role} LOGIN {options}")
                if role != OWNER:
                    # Their own queries would move the statement statistics between reads.
                    conn.execute(f"ALTER ROLE {role} SET pg_stat_statements.track = 'none'")
        database = stack.enter_context(fresh_database(postgres))
        private = stack.enter_context(fresh_database(postgres))
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO {OWNER}')
            conn.execute(f'REVOKE CONNECT ON DATABASE "{private}" FROM PUBLIC')
        with psycopg.connect(postgres.dsn(private), autocommit=True) as conn:
            conn.execute("CREATE TABLE secrets (id serial PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO secrets (body) SELECT 's' || i FROM generate_series(1, 100) i"
            )
        _plant(postgres.dsn(database))
        for session in _sessions(postgres.dsn(database, user=OWNER)):
            stack.callback(session.close)
        yield Planted(postgres, database, private)
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO postgres')
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        _drop_roles(conn)


def _plant(dsn: str) -> None:
    """lp_owner's tables (autovacuum off, so nothing changes between reads), bloated and read."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute(f"SET ROLE {OWNER}")
        off = "WITH (autovacuum_enabled = false)"
        conn.execute(f"CREATE TABLE orgs (id serial PRIMARY KEY, name text NOT NULL) {off}")
        conn.execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, org_id int REFERENCES orgs,"
            f" email text UNIQUE, created timestamptz DEFAULT now()) {off}"
        )
        conn.execute("INSERT INTO orgs (name) SELECT 'org' || i FROM generate_series(1, 200) i")
        conn.execute(
            "INSERT INTO users (org_id, email) SELECT 1 + i % 200, 'u' || i || '@x'"
            " FROM generate_series(1, 30000) i"
        )
        conn.execute("ANALYZE")
        conn.execute("DELETE FROM users WHERE id % 3 <> 0")
        for n in range(20):
            conn.execute("SELECT count(*) FROM users WHERE email = %s", (f"u{n}@x",))


def _sessions(dsn: str) -> list[Conn]:
    """lp_owner's sessions: three idle, one idle in a transaction holding a snapshot."""
    held = psycopg.connect(dsn, application_name="app")
    held.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    held.execute("SELECT count(*) FROM orgs")
    idle = [psycopg.connect(dsn, autocommit=True, application_name="pool") for _ in range(3)]
    return [held, *idle]


def collect(config: Config) -> tuple[Samples, ServerFacts]:
    collected = run_once(config)
    [facts] = collected.facts.values()
    return _others_only(parse_exposition(collected.body.decode())), facts


USED = ("pg_connections_used_ratio", frozenset({("target", "pg")}))


def _others_only(samples: Samples) -> Samples:
    """The share of connections in use without the exporter's own: a superuser's run opens one
    more (it visits the database the others may not connect to)."""
    if USED not in samples:
        return samples
    own = sum(
        v
        for (n, ls), v in samples.items()
        if n == "pg_connections_backends" and ("application_name", APPLICATION_NAME) in ls
    )
    setting = {n: v for (n, ls), v in samples.items() if n.startswith("pg_connections_")}
    slots = setting["pg_connections_max"] - setting["pg_connections_superuser_reserved"]
    slots -= setting["pg_connections_reserved"]
    return {**samples, USED: samples[USED] - own / slots}


# -- what a lesser role may leave out, and why ----------------------------------------------------

Key = tuple[str, frozenset[tuple[str, str]]]

# Series that describe what the collecting role itself could measure: different by design.
ROLE_RELATIVE = {
    "pg_sequences_measured",
    "pg_sequences_unmeasured",
    "pg_sequences_unreadable",
    "pg_bloat_tables_measured",
    "pg_bloat_tables_unmeasured",
    "pg_bloat_indexes_measured",
    "pg_bloat_indexes_unmeasured",
    "pg_database_size_unmeasured",
}


def _counted(samples: Samples, name: str, **labels: str) -> bool:
    """A count in `samples` that says some objects were left out for the role's privileges."""
    wanted = set(labels.items())
    return any(n == name and wanted <= ls and v > 0 for (n, ls), v in samples.items())


def _explained(key: Key, lesser: Samples, facts: ServerFacts) -> str | None:
    """Why a lesser role does not publish a series the superuser does (None: no reason)."""
    name, labels = key
    label = dict(labels)
    datname = label.get("datname", "")
    if datname in facts.forbidden_databases:
        return f"the role may not connect to {datname}"
    if name.startswith("pg_sequences_") and _counted(
        lesser, "pg_sequences_unmeasured", datname=datname, reason="no_privilege"
    ):
        return "sequences the role may not read are counted as no_privilege"
    for kind in ("table", "index"):
        if name.startswith(f"pg_bloat_{kind}_") and _counted(
            lesser,
            f"pg_bloat_{kind}{'es' if kind == 'index' else 's'}_unmeasured",
            datname=datname,
            method=label.get("method", ""),
            reason="no_privilege",
        ):
            return f"{kind} bloat the role may not measure is counted as no_privilege"
    if name == "pg_server_settings_pending_restart" and not facts.has_role("pg_read_all_settings"):
        return "documented: absent without pg_read_all_settings"
    if name == "pg_database_size_bytes" and _counted(
        lesser, "pg_database_size_unmeasured", reason="no_privilege"
    ):
        return "databases the role may not size are counted as no_privilege"
    return None


def _collector_of(name: str) -> str:
    """The built-in collector publishing a metric: the one with the longest matching prefix."""
    owners = [c for c in builtin_specs() if name.startswith(f"pg_{c}_")]
    return max(owners, key=len)


def _unavailable(samples: Samples) -> dict[str, str]:
    return {
        dict(ls)["collector"]: dict(ls)["reason"]
        for (n, ls), v in samples.items()
        if n == "pg_exporter_collector_available" and v == 0
    }


def _ours(key: Key) -> bool:
    """The exporter's own sessions and statements, and its self-metrics: not compared."""
    name, labels = key
    label = dict(labels)
    return (
        name.startswith(("pg_exporter_", "pg_up"))
        or label.get("application_name") == APPLICATION_NAME
        or label.get("user") in (SUPER, MONITOR, PLAIN)
    )


# A database's size counts its relation cache file (pg_internal.init, 160,944 bytes on PG 18),
# which a catalog change removes and the next session to start writes again: a read in between
# is that much smaller (seen once: 11,854,351 bytes between two reads of 12,015,295).
SIZE_SLACK_BYTES = {"pg_database_size_bytes": 512 * 1024}


def _within(value: float, bounds: list[float], slack: float = 0.0) -> bool:
    """Between the superuser's reads (counters and ages move), give or take float rounding
    and `slack`."""
    low, high = min(bounds), max(bounds)
    slack += 1e-9 * max(abs(low), abs(high), 1.0)
    return low - slack <= value <= high + slack


def differences(before: Samples, lesser: Samples, after: Samples, facts: ServerFacts) -> list[str]:
    """Where the lesser role's series are neither the superuser's (read before and after it)
    nor absent with a reason."""
    problems = []
    unavailable = _unavailable(lesser)
    for key in sorted(set(before) | set(after) | set(lesser), key=str):
        name = key[0]
        if _ours(key) or name in ROLE_RELATIVE:
            continue
        bounds = [s[key] for s in (before, after) if key in s]
        if key in lesser:
            if not bounds:
                problems.append(f"only the lesser role publishes {key}")
            elif not _within(lesser[key], bounds, SIZE_SLACK_BYTES.get(name, 0.0)):
                problems.append(f"{key}: {lesser[key]} where the superuser read {bounds}")
            continue
        if len(bounds) < 2:
            continue  # came or went between the superuser's reads
        collector = _collector_of(name)
        if collector in unavailable:
            assert unavailable[collector], f"{collector} is unavailable without a reason"
            continue
        if _explained(key, lesser, facts) is None:
            problems.append(f"{key} is missing without a reason")
    return problems


@pytest.mark.parametrize("role", [MONITOR, PLAIN])
def test_lesser_roles_publish_the_superusers_numbers_or_say_why(
    planted: Planted, role: str
) -> None:
    before, _ = collect(planted.config(SUPER))
    lesser, facts = collect(planted.config(role))
    after, _ = collect(planted.config(SUPER))
    assert facts.user == role and not facts.superuser
    assert differences(before, lesser, after, facts) == []
    # Each collector ran or said why, and failed nowhere.
    up = {
        dict(ls)["collector"]: v for (n, ls), v in lesser.items() if n == "pg_exporter_collector_up"
    }
    reasons = _unavailable(lesser)
    assert set(up) == {n for n, s in builtin_specs().items() if s.target_type == "postgres"}
    assert all(v == 1 or reasons.get(c) for c, v in up.items()), (up, reasons)
    errors = [
        dict(ls)["collector"]
        for (n, ls), v in lesser.items()
        if n == "pg_exporter_collector_errors_total" and v
    ]
    assert errors == []
    # The planted truth the plain role cannot see is not published as healthy.
    if role == PLAIN:
        assert {"connections", "xmin_horizon", "replication", "wal"} <= set(reasons)
    assert planted.private in facts.forbidden_databases


def test_the_comparison_catches_a_partial_view(planted: Planted) -> None:
    """Without its requirement of pg_read_all_stats (as before), the connections collector
    runs for the plain role and publishes its partial view: the comparison says so."""
    before, _ = collect(planted.config(SUPER))
    config = planted.config(PLAIN)
    lenient = tuple(
        c.model_copy(update={"spec": c.spec.model_copy(update={"requires": Requirements()})})
        if c.name == "connections"
        else c
        for c in config.catalogue
    )
    lesser, facts = collect(config.model_copy(update={"catalogue": lenient}))
    after, _ = collect(planted.config(SUPER))
    problems = "\n".join(differences(before, lesser, after, facts))
    assert "pg_connections_used_ratio" in problems
    assert "pg_connections_max_idle_in_transaction_age_seconds" in problems


def _cannot_judge(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {
        f"{f.check}:{f.database or ''}:{f.object or ''}": f
        for f in findings
        if f.summary.startswith(("cannot judge", "cannot visit"))
        or (f.check == "collectors" and f.fix)
    }


@pytest.mark.parametrize("role", [MONITOR, PLAIN])
def test_the_report_names_the_grant_and_the_grant_works(planted: Planted, role: str) -> None:
    """ "cannot judge: GRANT ..." instead of ok; each GRANT, run, makes its finding go away."""
    everything = planted.config(role)
    blind = _cannot_judge(build_report(everything).findings)
    grants = {f.fix for f in blind.values()}
    assert all(f.severity.value == "info" for f in blind.values())
    if role == PLAIN:
        for check in ("connections", "idle_in_transaction"):
            assert blind[f"{check}::"].fix == f"GRANT pg_monitor TO {role};"
            assert blind[f"{check}::"].severity.value == "info"
    assert blind[f"sequences:{planted.database}:public"].fix == (
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};"
    )
    assert f"GRANT CONNECT ON DATABASE {ident(planted.private)} TO {role};" in grants
    ok = {f.check for f in build_report(everything).findings if f.severity.value == "ok"}
    assert "sequences" not in ok
    assert ("connections" in ok) == (role == MONITOR)
    try:
        # Each fix in the database its finding is about; a database it opens up may have
        # findings of its own, fixed in the next round.
        for _ in range(3):
            for finding in blind.values():
                assert finding.fix is not None
                dsn = planted.postgres.dsn(finding.database or planted.database)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(finding.fix.encode())
            fixed = blind
            blind = _cannot_judge(build_report(everything).findings)
            assert not set(blind) & set(fixed), "a fix that was run did not help"
            if not blind:
                break
        assert blind == {}
    finally:
        with psycopg.connect(planted.postgres.dsn(), autocommit=True) as conn:
            if role == PLAIN:
                conn.execute(f"REVOKE pg_monitor FROM {role}")
            conn.execute(f'REVOKE CONNECT ON DATABASE "{planted.private}" FROM {role}')
        for database in (planted.database, planted.private):
            with psycopg.connect(planted.postgres.dsn(database), autocommit=True) as conn:
                conn.execute(f"REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public FROM {role}")
