"""Checks of indexes and their use, per database: cache hit ratios; unused, duplicate,
redundant and invalid indexes; tables that look like they lack one; unindexed foreign keys.
"""

import re
from dataclasses import dataclass

from exporter.report.checks.base import (
    TABLE,
    Context,
    Judge,
    human_bytes,
    ident,
    percent,
    qualified,
    relation,
    same,
    when,
)
from exporter.report.findings import Finding, Severity, Value
from exporter.report.samples import Sample, Samples

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
        found.append(
            _droppable(
                ctx,
                "unused_index",
                s,
                f"never scanned {since}; {human_bytes(s.value)}",
                "Not unique and backing no constraint or foreign key, yet every write to the "
                "table updates it. Scans on standbys are not counted here: check them before "
                "dropping it.",
                stats_reset_timestamp_seconds=reset,
            )
        )
    return found


def _droppable(
    ctx: Context, check: str, s: Sample, summary: str, detail: str, **values: Value
) -> Finding:
    """An index a check says to drop: `s` is its size sample."""
    drop = _drop(ctx, s, check.removesuffix("_index"))
    return ctx.finding(
        check,
        Severity.INFO if check == "redundant_index" else Severity.WARNING,
        summary,
        database=s["datname"],
        object=relation(s, "indexrelname"),
        detail=f"On {relation(s)}{drop.on_partitions}. {detail}",
        fix=drop.statement,
        advice=drop.advice,
        values={"size_bytes": s.value, **values, "partitions": drop.partitions},
    )


@dataclass(frozen=True)
class _Drop:
    """How an index flagged by a check is dropped: concurrently, unless it is partitioned."""

    statement: str
    partitions: float | None  # the partitions' indexes of a partitioned table's index
    advice: str = ""

    @property
    def on_partitions(self) -> str:
        return "" if self.partitions is None else f" (and its {self.partitions:.0f} partitions)"


def _drop(ctx: Context, s: Sample, check: str) -> _Drop:
    name = relation(s, "indexrelname")
    partitions = same(
        ctx.samples, f"pg_index_health_{check}_index_partitions", s, *_INDEX, "relname"
    )
    if partitions is None:
        return _Drop(f"DROP INDEX CONCURRENTLY {name};", None)
    return _Drop(
        f"DROP INDEX {name};",
        partitions,
        "An index of a partitioned table is dropped with its partitions' indexes at once, "
        "and not CONCURRENTLY (PostgreSQL cannot): it takes an ACCESS EXCLUSIVE lock on the "
        "table and every partition for the moment the drop takes.",
    )


def duplicate_index(ctx: Context) -> list[Finding]:
    unused = _flagged_indexes(ctx.samples, "pg_index_health_unused_index_size_bytes")
    found = []
    for s in ctx.samples.all("pg_index_health_duplicate_index_size_bytes"):
        never = tuple(s[label] for label in _INDEX) in unused
        found.append(
            _droppable(
                ctx,
                "duplicate_index",
                s,
                f"same definition as {s['duplicate_of']}"
                + (", never scanned" if never else "")
                + f"; {human_bytes(s.value)}",
                f"{s['duplicate_of']} is kept (it backs a constraint, or is unique, or is "
                "older): dropping this one loses no lookup.",
                duplicate_of=s["duplicate_of"],
            )
        )
    return found


def redundant_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_redundant_index_size_bytes"):
        found.append(
            _droppable(
                ctx,
                "redundant_index",
                s,
                f"its columns lead {s['covered_by']}, which serves the same lookups; "
                f"{human_bytes(s.value)}",
                "Keep it only if a hot query benefits from it being smaller than the wider index.",
                covered_by=s["covered_by"],
            )
        )
    return found


def invalid_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_invalid_index_size_bytes"):
        name = relation(s, "indexrelname")
        drop = _drop(ctx, s, "invalid")
        partitioned = drop.partitions is not None
        found.append(
            ctx.finding(
                "invalid_index",
                Severity.WARNING,
                (
                    "invalid: not every partition's index is attached to it"
                    if partitioned
                    else "invalid (a failed CREATE or REINDEX ... CONCURRENTLY)"
                )
                + f"; {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {relation(s)}"
                + (
                    f", a partitioned table ({drop.partitions:.0f} partitions' indexes attached)."
                    if partitioned
                    else "."
                )
                + " Queries do not use it, but writes may still maintain it (a unique one still "
                "enforces uniqueness).",
                fix=drop.statement,
                advice=(
                    "Or complete it: CREATE INDEX CONCURRENTLY on each partition that lacks "
                    f"one, then ALTER INDEX {name} ATTACH PARTITION each of them. " + drop.advice
                    if partitioned
                    else "Then build it again with CREATE INDEX CONCURRENTLY after fixing what "
                    f"made it fail, or rebuild it in place: REINDEX INDEX CONCURRENTLY {name};"
                ),
                values={"size_bytes": s.value, "partitions": drop.partitions},
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

        def figure(own: str, table: str, s: Sample = s) -> float | None:
            # index_health's own figure (summed over partitions), else the tables collector's.
            mine = same(ctx.samples, f"pg_index_health_missing_index_{own}", s, *TABLE)
            return mine if mine is not None else same(ctx.samples, table, s, *TABLE)

        scans = figure("seq_scan_total", "pg_tables_seq_scan_total")
        rows = figure("live_rows", "pg_tables_n_live_tup")
        fetched = figure("idx_tup_fetch_total", "pg_tables_idx_tup_fetch_total")
        partitions = same(ctx.samples, "pg_index_health_missing_index_partitions", s, *TABLE)
        readers = _statements_reading(ctx, s["datname"], s["relname"])
        where = (
            "Statements that mention it (queryid): " + ", ".join(readers[:5]) + "."
            if readers
            else "Find the statements that filter it in pg_stat_statements (the statement_text "
            "collector publishes their text)."
        )
        if partitions is None:
            how = f"CREATE INDEX CONCURRENTLY ON {name} (<column>);"
        else:
            how = (
                f"on a partitioned table, index the parent ON ONLY and each partition "
                f"concurrently, then attach them: CREATE INDEX <name> ON ONLY {name} "
                "(<column>); then for each partition CREATE INDEX CONCURRENTLY <its index> ON "
                "<partition> (<column>); and ALTER INDEX <name> ATTACH PARTITION <its index>;"
            )
        found.append(
            ctx.finding(
                "missing_index",
                Severity.WARNING,
                f"sequential scans read {s.value:,.0f} rows"
                + (f" in {scans:,.0f} scans" if scans is not None else "")
                + (f" of a {rows:,.0f}-row table" if rows is not None else "")
                + (f" ({partitions:.0f} partitions)" if partitions is not None else "")
                + f", index scans fetched {fetched or 0:,.0f}",
                database=s["datname"],
                object=name,
                detail=(
                    f"Summed over the {partitions:.0f} partitions of this partitioned table: a "
                    "lookup needs its index on every partition. "
                    if partitions is not None
                    else ""
                )
                + "The statistics name the table, not the column that needs an index. "
                + where,
                advice=f"EXPLAIN those statements and index the columns their WHERE clauses "
                f"filter on: {how}",
                values={
                    "seq_tup_read": s.value,
                    "seq_scan": scans,
                    "n_live_tup": rows,
                    "idx_tup_fetch": fetched,
                    "partitions": partitions,
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
        tree = ctx.samples.all(
            "pg_index_health_unindexed_foreign_key_partition",
            **{label: s[label] for label in (*TABLE, "conname")},
        )
        if tree and columns:
            fix: str | None = _partitioned_index_script(tree, columns)
            advice = (
                "Run the statements one at a time, in this order (CREATE INDEX CONCURRENTLY "
                "cannot run inside a transaction block; psql sends each on its own). ON ONLY "
                "creates the parent's index without building it; each partition's is built "
                "without blocking writes; attaching the last one makes the parent's valid. "
                "(CREATE INDEX CONCURRENTLY on the parent itself fails: PostgreSQL cannot build "
                "a partitioned index concurrently.)"
            )
        else:
            fix = f"CREATE INDEX CONCURRENTLY ON {table} ({columns});" if columns else None
            advice = "" if columns else "Index the foreign key's columns, in its order."
        partitions = sorted(qualified(p["partschema"], p["partname"]) for p in tree if p.value > 0)
        found.append(
            ctx.finding(
                "unindexed_foreign_key",
                Severity.WARNING,
                f"foreign key {s['conname']}"
                + (f" ({columns})" if columns else "")
                + " has no index that leads with its columns"
                + (f" on some of its {len(partitions)} partitions" if tree else ""),
                database=s["datname"],
                object=f"{table}.{ident(s['conname'])}",
                detail="Deleting or updating a referenced row scans this table"
                + (f" ({rows:,.0f} rows)" if rows is not None else "")
                + (f" (partitions: {', '.join(partitions)})" if partitions else "")
                + " for rows that point at it, holding locks meanwhile.",
                fix=fix,
                advice=advice,
                values={
                    "columns": columns or None,
                    "n_live_tup": rows,
                    "partitions": len(partitions) or None,
                },
            )
        )
    return found


def _partitioned_index_script(tree: list[Sample], columns: str) -> str:
    """Index a partitioned table without blocking writes: the parent ON ONLY, each partition
    concurrently (or an existing identical index), then attach them, deepest first."""
    children: dict[tuple[str, str], list[Sample]] = {}
    for row in tree:
        children.setdefault((row["parentschema"], row["parentname"]), []).append(row)
    on_only: list[str] = []
    concurrently: list[str] = []
    attach: list[str] = []

    def index(row: Sample) -> str:
        """The statements that give `row`'s relation its index; the index's name."""
        if row["attach"]:
            return qualified(row["partschema"], row["attach"])
        name = qualified(row["partschema"], row["index_name"])
        table = qualified(row["partschema"], row["partname"])
        below = children.get((row["partschema"], row["partname"]), [])
        if not below and row.value > 0:
            concurrently.append(
                f"CREATE INDEX CONCURRENTLY {ident(row['index_name'])} ON {table} ({columns});"
            )
            return name
        on_only.append(f"CREATE INDEX {ident(row['index_name'])} ON ONLY {table} ({columns});")
        for child in sorted(below, key=lambda c: (c["partschema"], c["partname"])):
            attach.append(f"ALTER INDEX {name} ATTACH PARTITION {index(child)};")
        return name

    [root] = [row for row in tree if row.value == 0]
    index(root)
    return "\n".join(on_only + concurrently + attach)
