"""Checks of statement statistics: the slowest statements (pg_stat_statements), and whether
those statistics are available at all, with the step that makes them so.
"""

from dataclasses import dataclass

from exporter.report.checks.base import Context, human_seconds, same
from exporter.report.findings import Finding, Severity
from exporter.report.samples import Sample


@dataclass(frozen=True)
class _Statement:
    sample: Sample  # pg_statements_calls_total
    calls: float
    mean: float
    total: float


def statements(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    labels = ("datname", "user", "queryid")
    rows = []
    left_out = 0
    for s in ctx.samples.all("pg_statements_calls_total"):
        if ctx.monitoring_role is not None and s["user"] == ctx.monitoring_role:
            left_out += 1
            continue
        mean = same(ctx.samples, "pg_statements_mean_exec_time_seconds", s, *labels)
        total = same(ctx.samples, "pg_statements_exec_time_seconds_total", s, *labels)
        if mean is not None and total is not None:
            rows.append(_Statement(s, s.value, mean, total))
    by_total = sorted(rows, key=lambda r: -r.total)
    by_mean = sorted(rows, key=lambda r: -r.mean)
    rank_total = {id(r): i for i, r in enumerate(by_total, 1)}
    rank_mean = {id(r): i for i, r in enumerate(by_mean, 1)}
    chosen = {id(r): r for r in by_total[: t.top_statements] + by_mean[: t.top_statements]}
    chosen |= {id(r): r for r in rows if r.mean >= t.slow_statement_mean_seconds}
    texts = {
        tuple(s[label] for label in labels): s["query"]
        for s in ctx.samples.all("pg_statement_text_info")
    }
    mine = (
        f" Statements of {ctx.monitoring_role} (the exporter's own queries) are left out."
        if left_out
        else ""
    )
    found = []
    for key, r in sorted(chosen.items(), key=lambda item: rank_total[item[0]]):
        s = r.sample
        text = texts.get(tuple(s[label] for label in labels))
        slow = r.mean >= t.slow_statement_mean_seconds
        found.append(
            ctx.finding(
                "statements",
                Severity.WARNING if slow else Severity.INFO,
                f"mean {human_seconds(r.mean)} over {r.calls:,.0f} call(s), "
                f"{human_seconds(r.total)} in total (#{rank_total[key]} by total, "
                f"#{rank_mean[key]} by mean time)",
                database=s["datname"],
                object=s["queryid"],
                detail=(
                    f"Run by {s['user']}: {text}"
                    if text
                    else f"Run by {s['user']}; its text is not collected (enable the "
                    "statement_text collector, or look it up as below)."
                )
                + mine,
                # Finding its text fixes nothing: that goes in the advice, not in `fix`.
                advice=(
                    ""
                    if text
                    else "Its text: SELECT query FROM pg_stat_statements WHERE queryid = "
                    f"{s['queryid']}; "
                )
                + (
                    "EXPLAIN (ANALYZE, BUFFERS) it with typical parameters and index or "
                    "rewrite what dominates its time."
                    if slow
                    else ""
                ),
                values={
                    "user": s["user"],
                    "calls": r.calls,
                    "mean_seconds": r.mean,
                    "total_seconds": r.total,
                    "rank_by_total": rank_total[key],
                    "rank_by_mean": rank_mean[key],
                    "query": text,
                },
                position=rank_total[key],
            )
        )
    return found


def pg_stat_statements(ctx: Context) -> list[Finding]:
    """Whether statement statistics are available, and if not, why and how to change that."""
    collector = ctx.catalogue.get("statements")
    status = ctx.statuses.get("statements")
    if collector is None or not collector.spec.enabled:
        return [
            ctx.finding(
                "pg_stat_statements",
                Severity.INFO,
                "not checked: the statements collector is disabled in the configuration",
            )
        ]
    if status is None:
        return []  # not run on this target (a PgBouncer, or the target is down)
    if status.state == "ok":
        tracked = ctx.samples.get("pg_statements_tracked")
        limit = ctx.samples.get("pg_statements_max")
        return [
            ctx.finding(
                "pg_stat_statements",
                Severity.OK,
                "enabled"
                + (
                    f": {tracked:,.0f} of at most {limit:,.0f} statements tracked"
                    if tracked
                    else ""
                ),
                values={"tracked": tracked, "max": limit},
            )
        ]
    if status.state != "unavailable":
        return []  # an error: reported with the collectors
    reason = status.message
    if "shared_preload_libraries" in reason:
        fix = None
        advice = (
            "Add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart, "
            "then CREATE EXTENSION pg_stat_statements; in the database the exporter connects to."
        )
    elif "extension" in reason:
        fix = "CREATE EXTENSION pg_stat_statements;"
        advice = "In the database the exporter connects to."
    elif lacking := ctx.missing_roles("statements"):
        fix = ctx.grant(lacking)
        advice = "Without pg_read_all_stats other roles' statements have no queryid."
    else:
        fix, advice = None, ""
    return [
        ctx.finding(
            "pg_stat_statements",
            Severity.WARNING,
            f"not available: {reason}",
            detail="Without it the report cannot name slow statements.",
            fix=fix,
            advice=advice,
        )
    ]
