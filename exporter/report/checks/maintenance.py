"""Checks of what VACUUM and ANALYZE look after, per database: table and index bloat (and
where it is only estimated), dead rows, and stale planner statistics.
"""

from exporter.report.checks.base import (
    TABLE,
    Context,
    Judge,
    human_bytes,
    percent,
    relation,
    same,
    when,
)
from exporter.report.findings import Finding, Severity
from exporter.report.samples import Sample

_METHODS = {
    "pgstattuple": "measured with pgstattuple",
    "estimate": "estimated from the planner's statistics (published only when they are fresh "
    "and complete)",
}


def bloat(kind: str) -> Judge:
    check, name_label = (
        ("table_bloat", "relname") if kind == "table" else ("index_bloat", "indexrelname")
    )

    def judge(ctx: Context) -> list[Finding]:
        flag_ratio = ctx.param("bloat", "flag_ratio")
        flag_bytes = ctx.param("bloat", "flag_bytes")
        # Per relation, the measured number where there is one, else the estimate.
        best: dict[tuple[str, str, str], tuple[str, float, Sample]] = {}
        for s in ctx.samples.all(f"pg_bloat_{kind}_ratio"):
            key = (s["datname"], s["schemaname"], s[name_label])
            if key not in best or s["method"] == "pgstattuple":
                best[key] = (s["method"], s.value, s)
        found = []
        for (db, _, _), (method, ratio, s) in sorted(best.items()):
            size = same(
                ctx.samples,
                f"pg_bloat_{kind}_bytes",
                s,
                "datname",
                "schemaname",
                name_label,
                "method",
            )
            if size is None or ratio < flag_ratio or size < flag_bytes:
                continue
            name = relation(s, name_label)
            if kind == "table":
                fix = f"VACUUM (ANALYZE) {name};"
                advice = (
                    "VACUUM makes the space reusable by new rows but rarely gives it back to the "
                    f"operating system; to shrink the table: VACUUM FULL {name} (an exclusive "
                    "lock while it rewrites the table) or pg_repack."
                )
            else:
                fix = f"REINDEX INDEX CONCURRENTLY {name};"
                advice = ""
            found.append(
                ctx.finding(
                    check,
                    Severity.WARNING,
                    f"{percent(ratio)} bloat ({human_bytes(size)}), {method}",
                    database=db,
                    object=name,
                    detail=f"Space beyond what its live rows need, {_METHODS.get(method, method)}.",
                    fix=fix,
                    advice=advice,
                    values={"bloat_ratio": ratio, "bloat_bytes": size, "method": method},
                )
            )
        if kind == "table":
            found.extend(_bloat_unmeasured(ctx))
        return found

    return judge


def _bloat_unmeasured(ctx: Context) -> list[Finding]:
    """Databases where bloat is only estimated because pgstattuple is not installed."""
    found = []
    for s in ctx.samples.all(
        "pg_bloat_tables_unmeasured", method="pgstattuple", reason="not_installed"
    ):
        found.append(
            ctx.finding(
                "table_bloat",
                Severity.INFO,
                f"bloat of {s.value:.0f} table(s) is only estimated: pgstattuple is not installed",
                database=s["datname"],
                detail="Estimates are published only where the planner's statistics are fresh, "
                "complete and readable; pgstattuple measures the rest.",
                fix="CREATE EXTENSION pgstattuple;",
                values={"tables": s.value},
            )
        )
    return found


def vacuum(ctx: Context) -> list[Finding]:
    minimum = ctx.param("tables", "dead_tuples_min")
    share = ctx.param("tables", "dead_tuples_ratio")
    found = []
    for s in ctx.samples.all("pg_tables_n_dead_tup"):
        live = same(ctx.samples, "pg_tables_n_live_tup", s, *TABLE) or 0.0
        if s.value < minimum or s.value <= share * live:
            continue
        vacuums = [
            same(ctx.samples, f"pg_tables_{m}_timestamp_seconds", s, *TABLE)
            for m in ("last_vacuum", "last_autovacuum")
        ]
        last = max((v for v in vacuums if v is not None), default=None)
        name = relation(s)
        found.append(
            ctx.finding(
                "vacuum",
                Severity.WARNING,
                f"{s.value:,.0f} dead rows ({percent(s.value / (s.value + live))} of its rows); "
                f"last vacuumed {when(last)}",
                database=s["datname"],
                object=name,
                detail="Dead rows take space and slow every scan until VACUUM removes them. "
                "Autovacuum should have: check that it is enabled for the table "
                "(autovacuum_enabled) and not held back by a long transaction.",
                fix=f"VACUUM (ANALYZE) {name};",
                values={
                    "n_dead_tup": s.value,
                    "n_live_tup": live,
                    "last_vacuum_timestamp_seconds": last,
                },
            )
        )
    return found


def analyze(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_tables_n_mod_since_analyze"):
        live = same(ctx.samples, "pg_tables_n_live_tup", s, *TABLE) or 0.0
        if s.value < t.analyze_min_modifications or s.value <= t.analyze_modified_ratio * live:
            continue
        analyzes = [
            same(ctx.samples, f"pg_tables_{m}_timestamp_seconds", s, *TABLE)
            for m in ("last_analyze", "last_autoanalyze")
        ]
        last = max((a for a in analyzes if a is not None), default=None)
        name = relation(s)
        found.append(
            ctx.finding(
                "analyze",
                Severity.WARNING,
                f"{s.value:,.0f} rows modified since it was last analyzed ({when(last)}); "
                f"{live:,.0f} live rows",
                database=s["datname"],
                object=name,
                detail="The planner's statistics are stale: plans may misjudge row counts.",
                fix=f"ANALYZE {name};",
                values={
                    "n_mod_since_analyze": s.value,
                    "n_live_tup": live,
                    "last_analyze_timestamp_seconds": last,
                },
            )
        )
    return found
