"""Checks of client connections (server-wide): slots in use, sessions idle in a transaction,
and PgBouncer's pools (clients waiting for a server, databases at their connection limit).
"""

from exporter.report.checks.base import Context, human_seconds, level, literal, percent, same
from exporter.report.findings import Finding, Severity
from exporter.targets.sessions import APPLICATION_NAME


def connections(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    samples = ctx.samples
    used = samples.get("pg_connections_used_ratio")
    if used is None:
        return []
    max_connections = samples.get("pg_connections_max") or 0.0
    reserved = (samples.get("pg_connections_superuser_reserved") or 0.0) + (
        samples.get("pg_connections_reserved") or 0.0
    )
    slots = max_connections - reserved
    states: dict[str, float] = {}
    for s in samples.all("pg_connections_backends"):
        states[s["state"]] = states.get(s["state"], 0.0) + s.value
    clients = sum(states.values())
    by_state = ", ".join(f"{n:.0f} {state}" for state, n in sorted(states.items()))
    severity = level(used, t.connections_warning, t.connections_critical)
    found = [
        ctx.finding(
            "connections",
            severity or Severity.OK,
            f"{clients:.0f} of {slots:.0f} connections in use ({percent(used)})",
            detail=f"By state: {by_state}. max_connections is {max_connections:.0f}, of which "
            f"{reserved:.0f} are reserved for superusers and roles with "
            "pg_use_reserved_connections; at 100% other new connections are refused. Idle "
            "connections count too and each costs memory.",
            advice=(
                "Pool connections (PgBouncer in transaction mode) or shrink the applications' "
                "pools; raise max_connections only with the memory for it (needs a restart)."
                if severity
                else ""
            ),
            values={"used_ratio": used, "clients": clients, "max_connections": max_connections}
            | {f"state_{state}": n for state, n in sorted(states.items())},
        )
    ]
    for metric, label, what in (
        ("pg_connections_database_limit_used_ratio", "datname", "database"),
        ("pg_connections_role_limit_used_ratio", "user", "role"),
    ):
        for s in samples.all(metric):
            severity = level(s.value, t.connections_warning, t.connections_critical)
            if severity is None:
                continue
            found.append(
                ctx.finding(
                    "connections",
                    severity,
                    f"{percent(s.value)} of the {what}'s CONNECTION LIMIT in use",
                    database=s["datname"] or None,
                    object=s[label],
                    detail=f"At 100% new connections to this {what} are refused.",
                    values={"used_ratio": s.value},
                )
            )
    return found


def idle_in_transaction(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_connections_max_idle_in_transaction_age_seconds"):
        if s.value <= 0:
            continue
        db = s["datname"]
        # The exporter's own sessions pass through "idle in transaction" between the queries
        # of one collector run; they are not what this finding is about.
        idle = [
            b
            for b in ctx.samples.all("pg_connections_backends", datname=db)
            if b["state"].startswith("idle in transaction")
            and b["application_name"] != APPLICATION_NAME
        ]
        sessions = sum(b.value for b in idle)
        apps = ", ".join(sorted({b["application_name"] or "(none)" for b in idle})) or "unknown"
        severity = level(
            s.value, t.idle_in_transaction_warning_seconds, t.idle_in_transaction_critical_seconds
        )
        found.append(
            ctx.finding(
                "idle_in_transaction",
                severity or Severity.INFO,
                f"{sessions:.0f} session(s) idle in transaction, the oldest for "
                f"{human_seconds(s.value)}",
                database=db,
                detail=f"application_name: {apps}. A transaction left open holds its locks "
                "and keeps vacuum from removing rows changed since it began.",
                fix=(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state LIKE "
                    f"'idle in transaction%' AND datname = {literal(db)} "
                    "AND now() - state_change > "
                    f"interval '{t.idle_in_transaction_warning_seconds:.0f} seconds';"
                    if severity
                    else None
                ),
                advice="Find the code path that leaves the transaction open; "
                "idle_in_transaction_session_timeout ends such sessions automatically.",
                values={"max_idle_seconds": s.value, "sessions": sessions},
            )
        )
    return found


def pool(ctx: Context) -> list[Finding]:
    """PgBouncer: clients waiting for a server connection, and databases at their pool limit."""
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pgbouncer_pools_max_wait_seconds"):
        waiting = same(ctx.samples, "pgbouncer_pools_client_waiting", s, "datname", "usename")
        severity = level(s.value, t.pool_wait_warning_seconds, t.pool_wait_critical_seconds)
        if severity is None and not waiting:
            continue
        found.append(
            ctx.finding(
                "pool",
                severity or Severity.WARNING,
                f"{waiting or 0:.0f} client(s) waiting for a server connection, the longest "
                f"for {human_seconds(s.value)}",
                database=s["datname"],
                object=f"{s['datname']}/{s['usename']}",
                detail="Clients queue when every server connection of the pool is busy.",
                advice="Raise the pool's default_pool_size (within the server's "
                "max_connections) or find the transactions that hold connections long.",
                values={"client_waiting": waiting, "max_wait_seconds": s.value},
            )
        )
    for s in ctx.samples.all("pgbouncer_databases_current_connections"):
        limit = same(ctx.samples, "pgbouncer_databases_max_connections", s, "datname")
        if not limit:
            continue
        ratio = s.value / limit
        severity = level(ratio, t.connections_warning, t.connections_critical)
        if severity is not None:
            found.append(
                ctx.finding(
                    "pool",
                    severity,
                    f"{s.value:.0f} of {limit:.0f} server connections in use ({percent(ratio)})",
                    database=s["datname"],
                    object=s["datname"],
                    detail="The database's max_db_connections in PgBouncer.",
                    values={"used_ratio": ratio},
                )
            )
    return found
