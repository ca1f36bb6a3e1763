"""The report's judgements: one target's samples in, findings out.

Every number judged here is a metric the exporter publishes (the same catalogue, collected
once); nothing here runs SQL. The health checks the collectors already make (unused,
duplicate, invalid indexes, missing-index candidates, ...) are taken as they are: a series of
those metrics is a flagged object. The report adds severities, thresholds for what the
metrics leave to alerts (ratios, ages), and the statement that fixes each finding.
Thresholds are documented in docs/report.md; keep that table in step with `Thresholds`.
"""

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.catalogue import Collector
from exporter.findings import Finding, Severity, Value
from exporter.samples import Sample, Samples
from exporter.store import CollectorStatus


@dataclass(frozen=True)
class Thresholds:
    """The report's own thresholds (those of the collectors are their `params`)."""

    cache_hit_ratio: float = 0.90  # heap or index blocks served from shared buffers, below: warning
    cache_hit_min_blocks: int = 1000  # fewer block accesses than this: too little traffic to judge
    connections_warning: float = 0.80  # share of the connections ordinary roles may open
    connections_critical: float = 0.95
    # Warnings where alerts/alerts.yml warns (docs/runbooks.md), so a report and the alerts
    # agree on what is a problem; critical is a step further.
    idle_in_transaction_warning_seconds: float = 300.0
    idle_in_transaction_critical_seconds: float = 1800.0
    pool_wait_warning_seconds: float = 1.0  # PgBouncer: the longest a client has waited
    pool_wait_critical_seconds: float = 5.0
    slow_statement_mean_seconds: float = 0.5  # mean execution time, at or above: warning
    top_statements: int = 5  # listed by total and by mean time
    analyze_min_modifications: int = 1000  # rows modified since ANALYZE, at least ...
    analyze_modified_ratio: float = 0.2  # ... and more than this share of the live rows
    wraparound_warning: float = 0.50  # transaction or multixact ID age / 2^31 (as the alerts)
    wraparound_critical: float = 0.75
    sequence_warning: float = 0.75  # share of a sequence's range used
    sequence_critical: float = 0.90

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Context:
    """One target's samples and what the report knows about how they were collected."""

    target: str
    target_type: str  # postgres | pgbouncer
    samples: Samples  # this target's samples only
    thresholds: Thresholds
    catalogue: Mapping[str, Collector]  # the configured collectors, by name
    statuses: Mapping[str, CollectorStatus]  # the collectors that ran on this target
    # The exporter's own role when it is a monitoring role: its statements are left out.
    monitoring_role: str | None = None

    def param(self, collector: str, name: str) -> float:
        return float(self.catalogue[collector].spec.params[name])

    def finding(
        self,
        check: str,
        severity: Severity,
        summary: str,
        *,
        database: str | None = None,
        object: str | None = None,
        detail: str = "",
        fix: str | None = None,
        advice: str = "",
        values: Mapping[str, Value] | None = None,
        position: int = 0,
    ) -> Finding:
        return Finding(
            check=check,
            severity=severity,
            target=self.target,
            summary=summary,
            database=database,
            object=object,
            detail=detail,
            fix=fix,
            advice=advice,
            values=dict(values or {}),
            position=position,
        )


Judge = Callable[[Context], list[Finding]]


@dataclass(frozen=True)
class Check:
    name: str  # a key of findings.CHECKS
    needs: tuple[str, ...]  # collectors whose successful run it judges
    judge: Judge
    ok: str | None  # the summary when nothing is found; None: no finding then


# -- formatting -------------------------------------------------------------------------------

_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]*$")
# PostgreSQL's reserved key words: as identifiers they must be quoted.
_RESERVED_WORDS = """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric system_user table tablesample then to trailing true union unique
    user using variadic verbose when where window with"""
_RESERVED = frozenset(_RESERVED_WORDS.split())


def ident(name: str) -> str:
    """An identifier as SQL needs it written: bare when it can be, else double-quoted."""
    if _PLAIN_IDENTIFIER.match(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def human_bytes(value: float) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} days"


def percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _level(value: float, warning: float, critical: float | None = None) -> Severity | None:
    if critical is not None and value >= critical:
        return Severity.CRITICAL
    if value >= warning:
        return Severity.WARNING
    return None


def _relation(sample: Sample, name_label: str = "relname") -> str:
    return qualified(sample["schemaname"], sample[name_label])


def _same(samples: Samples, name: str, sample: Sample, *labels: str) -> float | None:
    """The value of metric `name` for the object `sample` is about (matched on `labels`)."""
    return samples.get(name, **{label: sample[label] for label in labels})


_TABLE = ("datname", "schemaname", "relname")
_INDEX = ("datname", "schemaname", "indexrelname")


# -- server-wide ------------------------------------------------------------------------------


def _wraparound(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    worst: tuple[float, str] = (0.0, "")
    freeze_max_age = ctx.samples.get("pg_wraparound_autovacuum_freeze_max_age")
    for xid in ctx.samples.all("pg_wraparound_xid_ratio"):
        db = xid["datname"]
        mxid = ctx.samples.get("pg_wraparound_mxid_ratio", datname=db) or 0.0
        ratio = max(xid.value, mxid)
        worst = max(worst, (ratio, db))
        severity = _level(ratio, t.wraparound_warning, t.wraparound_critical)
        if severity is None:
            continue
        kind = "transaction ID" if xid.value >= mxid else "multixact ID"
        found.append(
            ctx.finding(
                "wraparound",
                severity,
                f"{kind} age is {percent(ratio)} of the wraparound limit",
                database=db,
                detail="PostgreSQL stops assigning IDs shortly before 100%. Autovacuum starts "
                "anti-wraparound vacuums at autovacuum_freeze_max_age"
                + (f" ({freeze_max_age:,.0f} transactions)" if freeze_max_age else "")
                + "; an age far beyond it means vacuum cannot freeze old rows, usually because "
                "a long transaction, a prepared transaction or a replication slot holds back "
                "the xmin horizon (see pg_xmin_horizon_age).",
                advice="Remove what holds the horizon back, then run VACUUM (FREEZE) in "
                f"database {db}, largest and oldest tables first.",
                values={
                    "xid_age": ctx.samples.get("pg_wraparound_xid_age", datname=db),
                    "xid_ratio": xid.value,
                    "mxid_age": ctx.samples.get("pg_wraparound_mxid_age", datname=db),
                    "mxid_ratio": mxid,
                },
            )
        )
    if not found and worst[1]:
        found.append(
            ctx.finding(
                "wraparound",
                Severity.OK,
                f"the oldest database ({worst[1]}) is at {percent(worst[0])} of the limit",
                values={"max_ratio": worst[0]},
            )
        )
    return found


def _sequences(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_sequences_used_ratio"):
        severity = _level(s.value, t.sequence_warning, t.sequence_critical)
        if severity is None:
            continue
        name = _relation(s)
        found.append(
            ctx.finding(
                "sequences",
                severity,
                f"{percent(s.value)} of its range is used",
                database=s["datname"],
                object=name,
                detail="Measured against the type of the column it feeds: when it runs out, "
                "inserts fail.",
                fix=f"ALTER SEQUENCE {name} AS bigint;",
                advice="Widen the column it feeds too (ALTER TABLE ... ALTER COLUMN ... TYPE "
                "bigint, which rewrites the table).",
                values={"used_ratio": s.value},
            )
        )
    return found


def _migrations(ctx: Context) -> list[Finding]:
    """Custom collectors named *migration* that publish `failed` and `pending` counts."""
    found = []
    for name, collector in ctx.catalogue.items():
        status = ctx.statuses.get(name)
        if collector.builtin or "migration" not in name or status is None or status.state != "ok":
            continue
        flagged = []
        for column, severity in (("failed", Severity.CRITICAL), ("pending", Severity.WARNING)):
            for s in ctx.samples.all(f"{collector.prefix}_{column}"):
                if s.value > 0:
                    flagged.append(
                        ctx.finding(
                            "migrations",
                            severity,
                            f"{s.value:.0f} migration(s) {column} ({name})",
                            database=s["datname"] or None,
                            detail=f"Reported by the custom collector {name}.",
                            advice="Look at the migration tool's log and table, resolve the "
                            "migration, then deploy again.",
                            values={column: s.value},
                        )
                    )
        found.extend(
            flagged
            or [ctx.finding("migrations", Severity.OK, f"no failed or pending migrations ({name})")]
        )
    return found


def _connections(ctx: Context) -> list[Finding]:
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
    severity = _level(used, t.connections_warning, t.connections_critical)
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
            severity = _level(s.value, t.connections_warning, t.connections_critical)
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


def _idle_in_transaction(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_connections_max_idle_in_transaction_age_seconds"):
        if s.value <= 0:
            continue
        db = s["datname"]
        idle = [
            b
            for b in ctx.samples.all("pg_connections_backends", datname=db)
            if b["state"].startswith("idle in transaction")
        ]
        sessions = sum(b.value for b in idle)
        apps = ", ".join(sorted({b["application_name"] or "(none)" for b in idle})) or "unknown"
        severity = _level(
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
                    f"'idle in transaction%' AND datname = '{db}' AND now() - state_change > "
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


def _pool(ctx: Context) -> list[Finding]:
    """PgBouncer: clients waiting for a server connection, and databases at their pool limit."""
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pgbouncer_pools_max_wait_seconds"):
        waiting = _same(ctx.samples, "pgbouncer_pools_client_waiting", s, "datname", "usename")
        severity = _level(s.value, t.pool_wait_warning_seconds, t.pool_wait_critical_seconds)
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
        limit = _same(ctx.samples, "pgbouncer_databases_max_connections", s, "datname")
        if not limit:
            continue
        ratio = s.value / limit
        severity = _level(ratio, t.connections_warning, t.connections_critical)
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


# -- per database -----------------------------------------------------------------------------


def _cache_hit(kind: str, check: str, what: str) -> Judge:
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


def _unused_index(ctx: Context) -> list[Finding]:
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
        since = f"since {_when(reset)}" if reset else "since the statistics were last reset"
        name = _relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "unused_index",
                Severity.WARNING,
                f"never scanned {since}; {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {_relation(s)}. Not unique and backing no constraint or foreign key, "
                "yet every write to the table updates it. Scans on standbys are not counted "
                "here: check them before dropping it.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "stats_reset_timestamp_seconds": reset},
            )
        )
    return found


def _duplicate_index(ctx: Context) -> list[Finding]:
    unused = _flagged_indexes(ctx.samples, "pg_index_health_unused_index_size_bytes")
    found = []
    for s in ctx.samples.all("pg_index_health_duplicate_index_size_bytes"):
        name = _relation(s, "indexrelname")
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
                detail=f"On {_relation(s)}. {s['duplicate_of']} is kept (it backs a constraint, "
                "or is unique, or is older): dropping this one loses no lookup.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "duplicate_of": s["duplicate_of"]},
            )
        )
    return found


def _redundant_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_redundant_index_size_bytes"):
        name = _relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "redundant_index",
                Severity.INFO,
                f"its columns lead {s['covered_by']}, which serves the same lookups; "
                f"{human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {_relation(s)}. Keep it only if a hot query benefits from it being "
                "smaller than the wider index.",
                fix=f"DROP INDEX CONCURRENTLY {name};",
                values={"size_bytes": s.value, "covered_by": s["covered_by"]},
            )
        )
    return found


def _invalid_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_invalid_index_size_bytes"):
        name = _relation(s, "indexrelname")
        found.append(
            ctx.finding(
                "invalid_index",
                Severity.WARNING,
                f"invalid (a failed CREATE or REINDEX ... CONCURRENTLY); {human_bytes(s.value)}",
                database=s["datname"],
                object=name,
                detail=f"On {_relation(s)}. Queries do not use it, but writes may still "
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


def _missing_index(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_missing_index_seq_tup_read_total"):
        name = _relation(s)
        scans = _same(ctx.samples, "pg_tables_seq_scan_total", s, *_TABLE)
        rows = _same(ctx.samples, "pg_tables_n_live_tup", s, *_TABLE)
        fetched = _same(ctx.samples, "pg_tables_idx_tup_fetch_total", s, *_TABLE)
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


def _unindexed_foreign_key(ctx: Context) -> list[Finding]:
    found = []
    for s in ctx.samples.all("pg_index_health_unindexed_foreign_key"):
        table = _relation(s)
        columns = s["columns"]
        rows = _same(ctx.samples, "pg_tables_n_live_tup", s, *_TABLE)
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


_METHODS = {
    "pgstattuple": "measured with pgstattuple",
    "estimate": "estimated from the planner's statistics (published only when they are fresh "
    "and complete)",
}


def _bloat(kind: str) -> Judge:
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
            size = _same(
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
            name = _relation(s, name_label)
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


def _vacuum(ctx: Context) -> list[Finding]:
    minimum = ctx.param("tables", "dead_tuples_min")
    share = ctx.param("tables", "dead_tuples_ratio")
    found = []
    for s in ctx.samples.all("pg_tables_n_dead_tup"):
        live = _same(ctx.samples, "pg_tables_n_live_tup", s, *_TABLE) or 0.0
        if s.value < minimum or s.value <= share * live:
            continue
        vacuums = [
            _same(ctx.samples, f"pg_tables_{m}_timestamp_seconds", s, *_TABLE)
            for m in ("last_vacuum", "last_autovacuum")
        ]
        last = max((v for v in vacuums if v is not None), default=None)
        name = _relation(s)
        found.append(
            ctx.finding(
                "vacuum",
                Severity.WARNING,
                f"{s.value:,.0f} dead rows ({percent(s.value / (s.value + live))} of its rows); "
                f"last vacuumed {_when(last)}",
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


def _analyze(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_tables_n_mod_since_analyze"):
        live = _same(ctx.samples, "pg_tables_n_live_tup", s, *_TABLE) or 0.0
        if s.value < t.analyze_min_modifications or s.value <= t.analyze_modified_ratio * live:
            continue
        analyzes = [
            _same(ctx.samples, f"pg_tables_{m}_timestamp_seconds", s, *_TABLE)
            for m in ("last_analyze", "last_autoanalyze")
        ]
        last = max((a for a in analyzes if a is not None), default=None)
        name = _relation(s)
        found.append(
            ctx.finding(
                "analyze",
                Severity.WARNING,
                f"{s.value:,.0f} rows modified since it was last analyzed ({_when(last)}); "
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


@dataclass(frozen=True)
class _Statement:
    sample: Sample  # pg_statements_calls_total
    calls: float
    mean: float
    total: float


def _statements(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    labels = ("datname", "user", "queryid")
    rows = []
    left_out = 0
    for s in ctx.samples.all("pg_statements_calls_total"):
        if ctx.monitoring_role is not None and s["user"] == ctx.monitoring_role:
            left_out += 1
            continue
        mean = _same(ctx.samples, "pg_statements_mean_exec_time_seconds", s, *labels)
        total = _same(ctx.samples, "pg_statements_exec_time_seconds_total", s, *labels)
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
                fix=None
                if text
                else f"SELECT query FROM pg_stat_statements WHERE queryid = {s['queryid']};",
                advice="EXPLAIN (ANALYZE, BUFFERS) it with typical parameters and index or "
                "rewrite what dominates its time."
                if slow
                else "",
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


def _pg_stat_statements(ctx: Context) -> list[Finding]:
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
    elif "pg_read_all_stats" in reason:
        fix = "GRANT pg_monitor TO <the exporter's role>;"
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


def _schema(ctx: Context) -> list[Finding]:
    kinds = (
        "schemas",
        "tables",
        "partitioned_tables",
        "indexes",
        "foreign_keys",
        "sequences",
        "views",
        "materialized_views",
        "foreign_tables",
    )
    found = []
    for s in ctx.samples.all("pg_schema_tables"):
        db = s["datname"]
        counts = {k: ctx.samples.get(f"pg_schema_{k}", datname=db) for k in kinds}
        size = ctx.samples.get("pg_database_size_bytes", datname=db)
        listed = (
            ", ".join(f"{n:,.0f} {k.replace('_', ' ')}" for k, n in counts.items() if n)
            or "no objects"
        )
        found.append(
            ctx.finding(
                "schema",
                Severity.INFO,
                listed + (f"; {human_bytes(size)} on disk" if size is not None else ""),
                database=db,
                values=dict(counts) | {"size_bytes": size},
            )
        )
    return found


CHECK_LIST: tuple[Check, ...] = (
    Check("wraparound", ("wraparound",), _wraparound, None),
    Check("sequences", ("sequences",), _sequences, "no sequence is near the end of its range"),
    Check("migrations", (), _migrations, None),
    Check("connections", ("connections",), _connections, None),
    Check(
        "idle_in_transaction",
        ("connections",),
        _idle_in_transaction,
        "no session is idle in a transaction",
    ),
    Check(
        "pool",
        ("pgbouncer_pools", "pgbouncer_databases"),
        _pool,
        "no client waits for a server connection",
    ),
    Check("cache_hit_heap", ("statio",), _cache_hit("heap", "cache_hit_heap", "table"), None),
    Check("cache_hit_index", ("statio",), _cache_hit("idx", "cache_hit_index", "index"), None),
    Check("unused_index", ("index_health",), _unused_index, "no unused indexes"),
    Check("duplicate_index", ("index_health",), _duplicate_index, "no duplicate indexes"),
    Check("redundant_index", ("index_health",), _redundant_index, "no redundant indexes"),
    Check("invalid_index", ("index_health",), _invalid_index, "no invalid indexes"),
    Check(
        "missing_index",
        ("index_health", "tables"),
        _missing_index,
        "no table looks like it lacks an index",
    ),
    Check(
        "unindexed_foreign_key",
        ("index_health",),
        _unindexed_foreign_key,
        "every foreign key has an index",
    ),
    Check("table_bloat", ("bloat",), _bloat("table"), "no table is bloated"),
    Check("index_bloat", ("bloat",), _bloat("index"), "no index is bloated"),
    Check("vacuum", ("tables",), _vacuum, "no table has many dead rows"),
    Check("analyze", ("tables",), _analyze, "no table's statistics are stale"),
    Check("statements", ("statements",), _statements, None),
    Check("pg_stat_statements", (), _pg_stat_statements, None),
    Check("schema", ("schema",), _schema, None),
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
