"""Checks of what runs out: transaction IDs (wraparound), sequences, pending migrations.

And the schema inventory: how many objects, and how much disk, each database has.
"""

from exporter.report.checks.base import (
    Context,
    human_bytes,
    ident,
    level,
    percent,
    qualified,
    relation,
)
from exporter.report.findings import Finding, Severity
from exporter.report.samples import Sample

# -- server-wide ------------------------------------------------------------------------------


def wraparound(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    worst: tuple[float, str] = (0.0, "")
    freeze_max_age = ctx.samples.get("pg_wraparound_autovacuum_freeze_max_age")
    for xid in ctx.samples.all("pg_wraparound_xid_ratio"):
        db = xid["datname"]
        mxid = ctx.samples.get("pg_wraparound_mxid_ratio", datname=db) or 0.0
        ratio = max(xid.value, mxid)
        worst = max(worst, (ratio, db))
        severity = level(ratio, t.wraparound_warning, t.wraparound_critical)
        if severity is None:
            continue
        kind = "transaction ID" if xid.value >= mxid else "multixact ID"
        # template0 accepts no connections: no one can VACUUM in it, nor needs to.
        closed = ctx.samples.get("pg_wraparound_allows_connections", datname=db) == 0
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
                fix=None if closed else "VACUUM (FREEZE);",
                advice=(
                    f"{db} accepts no connections, so no VACUUM can be run in it (and none is "
                    "needed: its rows are frozen): autovacuum advances its age on its own once "
                    "it passes autovacuum_freeze_max_age. If it stays old, check that autovacuum "
                    "runs and what holds the xmin horizon back."
                    if closed
                    else "Remove what holds the horizon back, then run the VACUUM (FREEZE) "
                    f"connected to database {db} (it freezes every table there; as a superuser, "
                    "or the tables' owners' tables only), or table by table, largest and "
                    "oldest first."
                ),
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


def sequences(ctx: Context) -> list[Finding]:
    t = ctx.thresholds
    found = []
    for s in ctx.samples.all("pg_sequences_used_ratio"):
        severity = level(s.value, t.sequence_warning, t.sequence_critical)
        if severity is not None:
            found.append(_sequence(ctx, s, severity))
    for s in ctx.samples.all("pg_sequences_unreadable"):
        schema = ident(s["schemaname"])
        grant = f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {ctx.role};"
        found.append(
            ctx.finding(
                "sequences",
                Severity.INFO,
                f"cannot judge {s.value:.0f} sequence(s) of schema {schema}: "
                + grant.removesuffix(";"),
                database=s["datname"],
                object=schema,
                detail="The exporter's role may not read their values, so how much of their "
                "range is used is not known (nor the database's highest fraction).",
                fix=grant,
                advice="Run it as the sequences' owner or a superuser; ALTER DEFAULT PRIVILEGES "
                "... GRANT SELECT ON SEQUENCES covers sequences created later. On PostgreSQL "
                "14+ membership in pg_read_all_data also lets the role read them (and every "
                "table).",
                values={"sequences": s.value},
            )
        )
    return found


def _sequence(ctx: Context, s: Sample, severity: Severity) -> Finding:
    """A sequence near its limit, with what widens it: its columns, then itself."""
    name = relation(s)
    columns = ctx.samples.all(
        "pg_sequences_column_used_ratio",
        datname=s["datname"],
        schemaname=s["schemaname"],
        relname=s["relname"],
    )
    if not columns:
        return ctx.finding(
            "sequences",
            severity,
            f"{percent(s.value)} of its range is used",
            database=s["datname"],
            object=name,
            detail="Measured against its own range and the types of the columns it feeds: "
            "when it runs out, inserts fail.",
            fix=f"ALTER SEQUENCE {name} AS bigint;",
            advice="If it has an explicit MAXVALUE (MINVALUE when descending), raise that "
            "instead: ALTER SEQUENCE ... AS bigint keeps it.",
            values={"used_ratio": s.value},
        )
    # One ALTER TABLE per table the column is defined in; it widens partitions and children.
    roots: dict[tuple[str, str, str], list[Sample]] = {}
    for c in columns:
        roots.setdefault((c["rootschema"], c["roottable"], c["attname"]), []).append(c)
    # A serial's sequence is an integer one: widening its column alone changes nothing.
    statements = (
        [] if columns[0]["sequence_type"] == "bigint" else [f"ALTER SEQUENCE {name} AS bigint;"]
    )
    described = []
    for (schema, table, column), fed in sorted(roots.items()):
        root = qualified(schema, table)
        wider = "bigint[]" if fed[0]["basetype"].endswith("[]") else "bigint"
        statements.append(f"ALTER TABLE {root} ALTER COLUMN {ident(column)} TYPE {wider};")
        declared = fed[0]["atttype"]
        kind = declared if declared == fed[0]["basetype"] else f"{declared}, a {fed[0]['basetype']}"
        inheriting = sorted(
            qualified(c["tableschema"], c["tablename"])
            for c in fed
            if (c["tableschema"], c["tablename"]) != (schema, table)
        )
        described.append(
            f"{root}.{ident(column)} ({kind})"
            + (f" with its partitions or children {', '.join(inheriting)}" if inheriting else "")
        )
    return ctx.finding(
        "sequences",
        severity,
        f"{percent(s.value)} of its range is used; {len(roots)} column(s) would overflow",
        database=s["datname"],
        object=name,
        detail="Measured against the types of the columns it feeds, which overflow before "
        f"the sequence does: {'; '.join(described)}. When the first one is full, inserts fail.",
        fix="\n".join(statements),
        advice="ALTER TABLE ... TYPE rewrites the table (and its partitions) under an ACCESS "
        "EXCLUSIVE lock: plan it. A domain column becomes plain bigint (recreate the domain "
        "over bigint to keep its constraints); a column in a partition key or used by a view "
        "cannot be altered in place.",
        values={
            "used_ratio": s.value,
            "columns": ", ".join(
                f"{qualified(c['tableschema'], c['tablename'])}.{ident(c['attname'])}"
                for c in columns
            ),
        },
    )


def migrations(ctx: Context) -> list[Finding]:
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


# -- per database -----------------------------------------------------------------------------


def schema(ctx: Context) -> list[Finding]:
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
