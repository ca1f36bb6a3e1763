"""The report's judgements: one target's samples in, findings out.

Every number judged here is a metric the exporter publishes (the same catalogue, collected
once); nothing here runs SQL. The health checks the collectors already make (unused,
duplicate, invalid indexes, missing-index candidates, ...) are taken as they are: a series of
those metrics is a flagged object. The report adds severities, thresholds for what the
metrics leave to alerts (ratios, ages), and the statement that fixes each finding.

This module is the registry: `CHECK_LIST` (the checks in report order), `judge`, and the
findings about collectors that could not run. The checks themselves are grouped by what they
judge (capacity, connections, indexes, maintenance, statements); `base` holds the types and
helpers they share. Thresholds are documented in docs/report.md; keep that table in step with
`Thresholds` (checks/base.py).
"""

from exporter.checks import capacity, connections, indexes, maintenance, statements
from exporter.checks.base import Check, Context, Judge, Thresholds
from exporter.findings import Finding, Severity

__all__ = ["CHECK_LIST", "Check", "Context", "Judge", "Thresholds", "judge"]


CHECK_LIST: tuple[Check, ...] = (
    Check("wraparound", ("wraparound",), capacity.wraparound, None),
    Check(
        "sequences", ("sequences",), capacity.sequences, "no sequence is near the end of its range"
    ),
    Check("migrations", (), capacity.migrations, None),
    Check("connections", ("connections",), connections.connections, None),
    Check(
        "idle_in_transaction",
        ("connections",),
        connections.idle_in_transaction,
        "no session is idle in a transaction",
    ),
    Check(
        "pool",
        ("pgbouncer_pools", "pgbouncer_databases"),
        connections.pool,
        "no client waits for a server connection",
    ),
    Check(
        "cache_hit_heap", ("statio",), indexes.cache_hit("heap", "cache_hit_heap", "table"), None
    ),
    Check(
        "cache_hit_index", ("statio",), indexes.cache_hit("idx", "cache_hit_index", "index"), None
    ),
    Check("unused_index", ("index_health",), indexes.unused_index, "no unused indexes"),
    Check("duplicate_index", ("index_health",), indexes.duplicate_index, "no duplicate indexes"),
    Check("redundant_index", ("index_health",), indexes.redundant_index, "no redundant indexes"),
    Check("invalid_index", ("index_health",), indexes.invalid_index, "no invalid indexes"),
    Check(
        "missing_index",
        ("index_health", "tables"),
        indexes.missing_index,
        "no table looks like it lacks an index",
    ),
    Check(
        "unindexed_foreign_key",
        ("index_health",),
        indexes.unindexed_foreign_key,
        "every foreign key has an index",
    ),
    Check("table_bloat", ("bloat",), maintenance.bloat("table"), "no table is bloated"),
    Check("index_bloat", ("bloat",), maintenance.bloat("index"), "no index is bloated"),
    Check("vacuum", ("tables",), maintenance.vacuum, "no table has many dead rows"),
    Check("analyze", ("tables",), maintenance.analyze, "no table's statistics are stale"),
    Check("statements", ("statements",), statements.statements, None),
    Check("pg_stat_statements", (), statements.pg_stat_statements, None),
    Check("schema", ("schema",), capacity.schema, None),
)


def judge(ctx: Context) -> list[Finding]:
    """Every check whose collectors ran successfully on the target, plus why others did not."""
    found = _collector_problems(ctx)
    for check in CHECK_LIST:
        statuses = [ctx.statuses.get(name) for name in check.needs]
        if any(status is None or status.state != "ok" for status in statuses):
            continue  # not for this target type, or reported by _collector_problems
        results = check.judge(ctx)
        if not results and check.ok is not None:
            results = [ctx.finding(check.name, Severity.OK, check.ok)]
        found.extend(results)
    return found


def _collector_problems(ctx: Context) -> list[Finding]:
    """Collectors that failed, cannot run here, or are switched off though a check needs them."""
    needed = {name for check in CHECK_LIST for name in check.needs}
    found = []
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
            found.append(
                ctx.finding(
                    "collectors",
                    Severity.INFO,
                    f"{name} cannot run here: {status.message}",
                    object=name,
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
