"""The report's judgements, one registry of them: one target's samples in, findings out.

Every number judged here is a metric the exporter publishes (the same catalogue, collected
once); nothing here runs SQL. The health checks the collectors already make (unused,
duplicate, invalid indexes, missing-index candidates, ...) are taken as they are: a series of
those metrics is a flagged object. The report adds severities, thresholds for what the
metrics leave to alerts (ratios, ages), and the statement that fixes each finding.

This module is the registry: `CHECKS` (every check in report order, with its title, the
collectors it needs and the collector params it judges by), `judge`, the order of findings,
and the findings about the target and about collectors that could not run. The checks
themselves are grouped by what they judge (capacity, connections, indexes, maintenance,
statements); `base` holds the types and helpers they share. Thresholds are documented in
docs/report.md; keep that table in step with `Thresholds` (checks/base.py).
"""

from collections.abc import Mapping

from exporter.report.checks import capacity, connections, indexes, maintenance, statements
from exporter.report.checks.base import Check, Context, Judge, Thresholds, ident
from exporter.report.findings import Finding, Severity, TargetInfo

__all__ = [
    "CHECKS",
    "Check",
    "Context",
    "Judge",
    "Thresholds",
    "judge",
    "position",
    "sort_key",
    "target_finding",
    "thresholds",
    "title",
]

_BLOAT_PARAMS = (("bloat", "min_bytes"), ("bloat", "flag_ratio"), ("bloat", "flag_bytes"))

# Every check, in report order.
CHECKS: tuple[Check, ...] = (
    Check("target", "Target reachable"),
    Check("collectors", "Collectors"),
    Check("wraparound", "Transaction ID wraparound", ("wraparound",), capacity.wraparound),
    Check(
        "sequences",
        "Sequences near their limit",
        ("sequences",),
        capacity.sequences,
        "no sequence is near the end of its range",
    ),
    Check("migrations", "Schema migrations", (), capacity.migrations),
    Check("connections", "Connection utilisation", ("connections",), connections.connections),
    Check(
        "idle_in_transaction",
        "Sessions idle in transaction",
        ("connections",),
        connections.idle_in_transaction,
        "no session is idle in a transaction",
    ),
    Check(
        "pool",
        "PgBouncer pools",
        ("pgbouncer_pools", "pgbouncer_databases"),
        connections.pool,
        "no client waits for a server connection",
    ),
    Check(
        "cache_hit_heap",
        "Cache hit ratio: tables",
        ("statio",),
        indexes.cache_hit("heap", "cache_hit_heap", "table"),
    ),
    Check(
        "cache_hit_index",
        "Cache hit ratio: indexes",
        ("statio",),
        indexes.cache_hit("idx", "cache_hit_index", "index"),
    ),
    Check(
        "unused_index",
        "Unused indexes",
        ("index_health",),
        indexes.unused_index,
        "no unused indexes",
        params=(("index_health", "unused_min_bytes"),),
    ),
    Check(
        "duplicate_index",
        "Duplicate indexes",
        ("index_health",),
        indexes.duplicate_index,
        "no duplicate indexes",
    ),
    Check(
        "redundant_index",
        "Redundant indexes",
        ("index_health",),
        indexes.redundant_index,
        "no redundant indexes",
    ),
    Check(
        "invalid_index",
        "Invalid indexes",
        ("index_health",),
        indexes.invalid_index,
        "no invalid indexes",
    ),
    Check(
        "missing_index",
        "Tables probably missing an index",
        ("index_health", "tables"),
        indexes.missing_index,
        "no table looks like it lacks an index",
        params=tuple(
            ("index_health", f"missing_index_{p}")
            for p in ("min_rows", "min_seq_scans", "seq_ratio")
        ),
    ),
    Check(
        "unindexed_foreign_key",
        "Foreign keys without an index",
        ("index_health",),
        indexes.unindexed_foreign_key,
        "every foreign key has an index",
    ),
    Check(
        "table_bloat",
        "Table bloat",
        ("bloat",),
        maintenance.bloat("table"),
        params=_BLOAT_PARAMS,
    ),
    Check(
        "index_bloat",
        "Index bloat",
        ("bloat",),
        maintenance.bloat("index"),
        params=_BLOAT_PARAMS,
    ),
    Check(
        "vacuum",
        "Tables that need VACUUM",
        ("tables",),
        maintenance.vacuum,
        "no table has many dead rows",
        params=(("tables", "dead_tuples_min"), ("tables", "dead_tuples_ratio")),
    ),
    Check(
        "analyze",
        "Tables that need ANALYZE",
        ("tables",),
        maintenance.analyze,
        "no table's statistics are stale",
    ),
    Check("statements", "Slowest statements", ("statements",), statements.statements),
    Check("pg_stat_statements", "pg_stat_statements", (), statements.pg_stat_statements),
    Check("schema", "Schema inventory", ("schema",), capacity.schema),
)

_POSITION = {check.name: position for position, check in enumerate(CHECKS)}


def position(check: str) -> int:
    """Where the check comes in the report."""
    return _POSITION[check]


def title(check: str) -> str:
    """The check's heading in the report."""
    return CHECKS[_POSITION[check]].title


def sort_key(finding: Finding) -> tuple[int, int, str, int, str, str]:
    """The report's stable order: most severe first, then by check, target and object."""
    return (
        finding.severity.rank,
        _POSITION[finding.check],
        finding.target,
        finding.position,
        finding.database or "",
        finding.object or "",
    )


def thresholds(
    own: Thresholds, params: Mapping[str, Mapping[str, int | float | str]]
) -> dict[str, float]:
    """Every threshold the report judged by: its own, then the collector params checks use."""
    listed = own.as_dict()
    for check in CHECKS:
        for collector, name in check.params:
            value = params.get(collector, {}).get(name)
            if isinstance(value, int | float):
                listed[f"{collector}.{name}"] = float(value)
    return listed


def target_finding(target: TargetInfo) -> Finding:
    """Whether the target could be reached; when not, nothing else was checked."""
    if not target.up:
        return Finding(
            check="target",
            severity=Severity.CRITICAL,
            target=target.name,
            summary=f"cannot connect: {target.message or 'unknown error'}",
            detail="Nothing else could be checked on this target.",
        )
    return Finding(
        check="target",
        severity=Severity.OK,
        target=target.name,
        summary=f"{target.product} {target.server_version or ''} reachable",
    )


def judge(ctx: Context) -> list[Finding]:
    """Every check whose collectors ran successfully on the target, plus why others did not."""
    found = _collector_problems(ctx)
    for check in CHECKS:
        if check.judge is None:
            continue
        statuses = [ctx.statuses.get(name) for name in check.needs]
        lacking = sorted(
            {
                role
                for name, status in zip(check.needs, statuses, strict=True)
                if status is not None and status.state == "unavailable"
                for role in ctx.missing_roles(name)
            }
        )
        if lacking:
            # Not "ok": what the role may see would be part of the truth, so nothing is judged.
            grant = ctx.grant(lacking)
            found.append(
                ctx.finding(
                    check.name,
                    Severity.INFO,
                    f"cannot judge: {grant.removesuffix(';')}",
                    detail=f"The exporter's role lacks {', '.join(lacking)}: it would see only "
                    "part of what this check judges, so the collector it needs does not run.",
                    fix=grant,
                )
            )
            continue
        if any(status is None or status.state != "ok" for status in statuses):
            continue  # not for this target type, or reported by _collector_problems
        results = check.judge(ctx)
        unknown = {f.check for f in results} - _POSITION.keys()
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(sorted(unknown))}")
        if not results and check.ok is not None:
            results = [ctx.finding(check.name, Severity.OK, check.ok)]
        found.extend(results)
    return found


def _collector_problems(ctx: Context) -> list[Finding]:
    """Collectors that failed, cannot run here, or are switched off though a check needs them."""
    needed = {name for check in CHECKS for name in check.needs}
    found = [
        ctx.finding(
            "collectors",
            Severity.INFO,
            f"cannot visit database {database}: the role may not connect to it",
            database=database,
            detail="Per-database collectors skip it, so none of its tables, indexes or "
            "sequences are judged.",
            fix=f"GRANT CONNECT ON DATABASE {ident(database)} TO {ctx.role};",
        )
        for database in ctx.forbidden_databases
    ]
    for name, collector in sorted(ctx.catalogue.items()):
        if collector.spec.target_type != ctx.target_type:
            continue
        status = ctx.statuses.get(name)
        if not collector.spec.enabled:
            if name in needed and name != "statements":  # statements: pg_stat_statements says
                found.append(
                    ctx.finding(
                        "collectors",
                        Severity.INFO,
                        f"{name} is disabled in the configuration: its checks were skipped",
                        object=name,
                    )
                )
            continue
        if status is None or status.state in ("ok", "down"):
            continue
        if status.state == "unavailable":
            if name == "statements":
                continue  # the pg_stat_statements check explains it, with the fix
            lacking = ctx.missing_roles(name)
            found.append(
                ctx.finding(
                    "collectors",
                    Severity.INFO,
                    f"{name} cannot run here: {status.message}",
                    object=name,
                    fix=ctx.grant(lacking) if lacking else None,
                )
            )
        else:
            found.append(
                ctx.finding(
                    "collectors",
                    Severity.WARNING,
                    f"{name} failed: {status.message}",
                    object=name,
                    detail="The checks that need it were skipped.",
                )
            )
    return found
