"""Checks of what VACUUM and ANALYZE look after, per database: table and index bloat (and
where it is only estimated), dead rows, and stale planner statistics.
"""

import re

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
from exporter.report.findings import Finding, Severity, Value
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
    what = "table" if kind == "table" else "index"

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
        largest: tuple[float, float, Sample] | None = None
        for _, (method, ratio, s) in sorted(best.items()):
            size = same(ctx.samples, f"pg_bloat_{kind}_bytes", s, *_BLOATED, name_label)
            if size is None:
                continue
            if ratio < flag_ratio or size < flag_bytes:
                if largest is None or (size, ratio) > largest[:2]:
                    largest = (size, ratio, s)
                continue
            found.append(
                _table_bloat(ctx, s, ratio, size)
                if kind == "table"
                else ctx.finding(
                    check,
                    Severity.WARNING,
                    f"{percent(ratio)} bloat ({human_bytes(size)}), {method}",
                    database=s["datname"],
                    object=relation(s, name_label),
                    detail=f"Space beyond what its entries need, {_METHODS.get(method, method)}.",
                    fix=f"REINDEX INDEX CONCURRENTLY {relation(s, name_label)};",
                    values={"bloat_ratio": ratio, "bloat_bytes": size, "method": method},
                )
            )
        found.extend(_bloat_unmeasured(ctx, check, "tables" if kind == "table" else "indexes"))
        if not found:
            # Not "no table is bloated": the thresholds decide, and the largest says how much.
            threshold = f"{percent(flag_ratio)} and {human_bytes(flag_bytes)}"
            found.append(
                ctx.finding(
                    check,
                    Severity.OK,
                    f"no {what} above the thresholds ({threshold})"
                    + (
                        f"; largest: {relation(largest[2], name_label)} {percent(largest[1])} "
                        f"({human_bytes(largest[0])}, {largest[2]['method']})"
                        if largest
                        else f"; no {what} of at least "
                        f"{human_bytes(ctx.param('bloat', 'min_bytes'))} was measured"
                    ),
                    database=largest[2]["datname"] if largest else None,
                    values={"flag_ratio": flag_ratio, "flag_bytes": flag_bytes}
                    | (
                        {"largest_ratio": largest[1], "largest_bytes": largest[0]}
                        if largest
                        else {}
                    ),
                )
            )
        return found

    return judge


_BLOATED = ("datname", "schemaname", "method")


def _table_bloat(ctx: Context, s: Sample, ratio: float, size: float) -> Finding:
    """A bloated table: what VACUUM can do depends on whether the bloat is dead rows or free
    space, which pgstattuple tells apart (the estimate cannot)."""
    name = relation(s)
    method = s["method"]
    dead = same(ctx.samples, "pg_bloat_table_dead_bytes", s, *_BLOATED, "relname")
    free = same(ctx.samples, "pg_bloat_table_free_bytes", s, *_BLOATED, "relname")
    values: dict[str, Value] = {
        "bloat_ratio": ratio,
        "bloat_bytes": size,
        "method": method,
        "dead_bytes": dead,
        "free_bytes": free,
    }
    rewrite = (
        f"VACUUM FULL {name} rewrites it compactly under an ACCESS EXCLUSIVE lock (no reads or "
        "writes meanwhile); pg_repack does the same without blocking them."
    )
    if dead is not None and free is not None and free > dead:
        return ctx.finding(
            "table_bloat",
            Severity.WARNING,
            f"{percent(ratio)} bloat ({human_bytes(size)}), mostly free space, {method}",
            database=s["datname"],
            object=name,
            detail=f"Space beyond what its live rows need, {_METHODS[method]}: "
            f"{human_bytes(free)} free space and {human_bytes(dead)} dead rows. VACUUM will "
            "not help: the space is already free for new rows, but the table does not shrink.",
            fix=f"VACUUM FULL {name};",
            advice=rewrite + " Worth it only if the table will not grow back into the space.",
            values=values,
        )
    split = (
        f": {human_bytes(dead)} dead rows and {human_bytes(free)} free space"
        if dead is not None and free is not None
        else ""
    )
    return ctx.finding(
        "table_bloat",
        Severity.WARNING,
        f"{percent(ratio)} bloat ({human_bytes(size)})"
        + (", mostly dead rows" if split else "")
        + f", {method}",
        database=s["datname"],
        object=name,
        detail=f"Space beyond what its live rows need, {_METHODS.get(method, method)}{split}.",
        fix=f"VACUUM (ANALYZE) {name};",
        advice="VACUUM makes the dead rows' space reusable by new rows but rarely gives it back "
        f"to the operating system; to shrink the table: {rewrite}",
        values=values,
    )


def _bloat_unmeasured(ctx: Context, check: str, relations: str) -> list[Finding]:
    """Databases where bloat is not measured with pgstattuple because the role may not run it,
    and (tables) where it is only estimated because pgstattuple is not installed."""
    found = [
        ctx.finding(
            check,
            Severity.INFO,
            f"cannot judge {s.value:.0f} {relations} with pgstattuple: "
            + ctx.grant(["pg_stat_scan_tables"]).removesuffix(";"),
            database=s["datname"],
            detail="pgstattuple's functions are granted to pg_stat_scan_tables (part of "
            "pg_monitor); estimates are published only where the planner's statistics are "
            "fresh, complete and readable.",
            fix=ctx.grant(["pg_stat_scan_tables"]),
            values={relations: s.value},
        )
        for s in ctx.samples.all(
            f"pg_bloat_{relations}_unmeasured", method="pgstattuple", reason="no_privilege"
        )
    ]
    if check != "table_bloat":
        return found
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


def _temporary(s: Sample) -> bool:
    """Another session's temporary table: only that session can VACUUM or ANALYZE it."""
    return re.match(r"pg_(toast_)?temp_\d+$", s["schemaname"]) is not None


def vacuum(ctx: Context) -> list[Finding]:
    minimum = ctx.param("tables", "dead_tuples_min")
    share = ctx.param("tables", "dead_tuples_ratio")
    found = []
    for s in ctx.samples.all("pg_tables_n_dead_tup"):
        live = same(ctx.samples, "pg_tables_n_live_tup", s, *TABLE) or 0.0
        if s.value < minimum or s.value <= share * live or _temporary(s):
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
        if (
            s.value < t.analyze_min_modifications
            or s.value <= t.analyze_modified_ratio * live
            or _temporary(s)
        ):
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
