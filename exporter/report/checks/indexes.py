"""Checks of indexes and their use, per database: cache hit ratios; unused, duplicate,
redundant and invalid indexes; tables that look like they lack one; unindexed foreign keys.
"""

import re

from exporter.report.checks.base import (
    TABLE,
    Context,
    Judge,
    human_bytes,
    ident,
    percent,
    relation,
    same,
    when,
)
from exporter.report.findings import Finding, Severity, Value
from exporter.report.samples import Samples

_INDEX = ("datname", "schemaname", "indexrelname")


def cache_hit(kind: str, check: str, what: str) -> Judge:
    def judge(ctx: Context) -> list[Finding]:
        t = ctx.thresholds
        found = []
        for s in ctx.samples.all(f"pg_statio_{kind}_blks_hit_total"):
            db = s["datname"]
            read = ctx.samples.get(f"pg_statio_{kind}_blks_read_total", datname=db) or 0.0
            total = s.value + read
            if total == 0:
                continue  # no user tables, or none read: nothing to judge
            values: dict[str, Value] = {"blks_hit": s.value, "blks_read": read}
            if total < t.cache_hit_min_blocks:
                found.append(
                    ctx.finding(
                        check,
                        Severity.INFO,
                        f"too little traffic to judge ({total:,.0f} {what} block reads)",
                        database=db,
                        values=values,
                    )
                )
                continue
            ratio = s.value / total
            low = ratio < t.cache_hit_ratio
            found.append(
                ctx.finding(
                    check,
                    Severity.WARNING if low else Severity.OK,
                    f"{percent(ratio)} of {what} block reads served from shared buffers "
                    f"(target > {percent(t.cache_hit_ratio)})",
                    database=db,
                    detail="Lifetime counters since the statistics were last reset, summed over "
                    "the user tables: right for a one-shot report, while Prometheus rules give "
                    "the ratio over a recent window. Misses were read from the OS cache or disk.",
                    advice=(
                        "Compare the working set with shared_buffers; look for sequential scans "
                        "of large tables (missing indexes) and for unused or bloated indexes "
                        "that take cache."
                        if low
                        else ""
                    ),
                    values=values | {"ratio": ratio},
                )
            )
        return found

    return judge


def _flagged_indexes(samples: Samples, *metrics: str) -> set[tuple[str, ...]]:
    return {tuple(s[label] for label in _INDEX) for m in metrics for s in samples.all(m)}


def unused_index(ctx: Context) -> list[Finding]:
    # Duplicates and redundant indexes say so themselves (and that they are never scanned).
    elsewhere = _flagged_indexes(
        ctx.samples,
        "pg_index_health_duplicate_index_size_bytes",
        "pg_index_health_redundant_index_size_bytes",
    )
    found = []
    for s in ctx.samples.all("pg_index_health_unused_index_size_bytes"):
        if tuple(s[label] for label in _INDEX) in elsewhere:
            continue
        reset = ctx.samples.get("pg_indexes_stats_reset_timestamp_seconds", datname=s["datname"])
        since = f"since {when(reset)}" if reset else "since the statistics were last reset"
        name = relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "unused_index",
                Severity.WARNING,
                f"never scanned {since}; {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {relation(s)}. Not unique and backing no constraint or foreign key, "
                "yet every write to the table updates it. Scans on standbys are not counted "
                "here: check them before dropping it.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "stats_reset_timestamp_seconds": reset},
            )
        )
    return found


def duplicate_index(ctx: Context) -> list[Finding]:
    unused = _flagged_indexes(ctx.samples, "pg_index_health_unused_index_size_bytes")
    found = []
    for s in ctx.samples.all("pg_index_health_duplicate_index_size_bytes"):
        name = relation(s, "indexrelname")
        never = tuple(s[label] for label in _INDEX) in unused
        found.append(
            ctx.finding(
                "duplicate_index",
                Severity.WARNING,
                f"same definition as {s['duplicate_of']}"
                + (", never scanned" if never else "")
                + f"; {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {relation(s)}. {s['duplicate_of']} is kept (it backs a constraint, "
                "or is unique, or is older): dropping this one loses no lookup.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "duplicate_of": s["duplicate_of"]},
            )
        )
    return found


def redundant_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_redundant_index_size_bytes"):
        name = relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "redundant_index",
                Severity.INFO,
                f"its columns lead {s['covered_by']}, which serves the same lookups; "
                f"{human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {relation(s)}. Keep it only if a hot query benefits from it being "
                "smaller than the wider index.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "covered_by": s["covered_by"]},
            )
        )
    return found


def invalid_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_invalid_index_size_bytes"):
        name = relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "invalid_index",
                Severity.WARNING,
                f"invalid (a failed CREATE or REINDEX ... CONCURRENTLY); {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {relation(s)}. Queries do not use it, but writes may still "
                "maintain it (a unique one still enforces uniqueness).",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                advice="Then build it again with CREATE INDEX CONCURRENTLY after fixing what "
                f"made it fail, or rebuild it in place: REINDEX INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value},
            )
        )
    return found


def _statements_reading(ctx: Context, database: str, table: str) -> list[str]:
    """Queryids of collected statement texts that mention the table (statement_text)."""
    word = re.compile(rf"\b{re.escape(table)}\b", re.IGNORECASE)
    return sorted(
        {
            s["queryid"]
            for s in ctx.samples.all("pg_statement_text_info", datname=database)
            if word.search(s["query"])
        }
    )


def missing_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_missing_index_seq_tup_read_total"):
        name = relation(s)
        scans = same(ctx.samples, "pg_tables_seq_scan_total", s, *TABLE)
        rows = same(ctx.samples, "pg_tables_n_live_tup", s, *TABLE)
        fetched = same(ctx.samples, "pg_tables_idx_tup_fetch_total", s, *TABLE)
        readers = _statements_reading(ctx, s["datname"], s["relname"])
        where = (
            "Statements that mention it (queryid): " + ", ".join(readers[:5]) + "."
            if readers
            else "Find the statements that filter it in pg_stat_statements (the statement_text "
            "collector publishes their text)."
        )
        found.append(
            ctx.finding(
                "missing_index",
                Severity.WARNING,
                f"sequential scans read {s.value:,.0f} rows"
                + (f" in {scans:,.0f} scans" if scans is not None else "")
                + (f" of a {rows:,.0f}-row table" if rows is not None else "")
                + f", index scans fetched {fetched or 0:,.0f}",
                database=s["datname"],
                object=name,
                detail="The statistics name the table, not the column that needs an index. "
                + where,
                advice="EXPLAIN those statements and index the columns their WHERE clauses "
                f"filter on: CREATE INDEX CONCURRENTLY ON {name} (<column>);",
                values={
                    "seq_tup_read": s.value,
                    "seq_scan": scans,
                    "n_live_tup": rows,
                    "idx_tup_fetch": fetched,
                },
            )
        )
    return found


def unindexed_foreign_key(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_unindexed_foreign_key"):
        table = relation(s)
        columns = s["columns"]
        rows = same(ctx.samples, "pg_tables_n_live_tup", s, *TABLE)
        found.append(
            ctx.finding(
                "unindexed_foreign_key",
                Severity.WARNING,
                f"foreign key {s['conname']}"
                + (f" ({columns})" if columns else "")
                + " has no index that leads with its columns",
                database=s["datname"],
                object=f"{table}.{ident(s['conname'])}",
                detail="Deleting or updating a referenced row scans this table"
                + (f" ({rows:,.0f} rows)" if rows is not None else "")
                + " for rows that point at it, holding locks meanwhile.",
                fix=f"CREATE INDEX CONCURRENTLY ON {table} ({columns});" if columns else None,
                advice="" if columns else "Index the foreign key's columns, in its order.",
                values={"columns": columns or None, "n_live_tup": rows},
            )
        )
    return found
