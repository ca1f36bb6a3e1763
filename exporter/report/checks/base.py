"""The checks' shared vocabulary: thresholds, the context a check judges, the check type.

And the helpers every check module uses to name objects (identifier quoting, qualified names)
and to say numbers (bytes, seconds, percentages, timestamps) the same way in every finding.
Thresholds are documented in docs/report.md; keep that table in step with `Thresholds`.
"""

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exporter.catalogue import Collector
from exporter.report.findings import Finding, Severity, Value
from exporter.report.samples import Sample, Samples
from exporter.status import CollectorStatus
from exporter.targets import ServerFacts
from exporter.units import human_milliseconds


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


# pg_monitor and the predefined roles it is a member of: one GRANT pg_monitor gives any of them.
IN_PG_MONITOR = frozenset(
    {"pg_monitor", "pg_read_all_settings", "pg_read_all_stats", "pg_stat_scan_tables"}
)


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
    # What the probe found: the role connected as and what it may see (None: not probed).
    facts: ServerFacts | None = None
    # Databases the target's filter wants visited whose CONNECT the role lacks.
    forbidden_databases: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        """The exporter's role as SQL writes it ("<the exporter's role>" when not known)."""
        user = self.facts.user if self.facts is not None else ""
        return ident(user) if user else "<the exporter's role>"

    def missing_roles(self, collector: str) -> list[str]:
        """The predefined roles a collector requires that the exporter's role lacks."""
        spec = self.catalogue[collector].spec if collector in self.catalogue else None
        if spec is None or self.facts is None:
            return []
        return [r for r in spec.requires.roles if not self.facts.has_role(r)]

    def grant(self, roles: Iterable[str]) -> str:
        """The GRANT that gives the exporter's role `roles`: pg_monitor covers those it has."""
        wanted = sorted(set(roles))
        if set(wanted) <= IN_PG_MONITOR:
            wanted = ["pg_monitor"]
        return f"GRANT {', '.join(wanted)} TO {self.role};"

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
    """One of the report's checks: what it is called, what it needs, how it judges."""

    name: str  # in findings, the JSON schema's enum and docs/report.md
    title: str  # its heading in the report
    needs: tuple[str, ...] = ()  # collectors whose successful run it judges
    judge: Judge | None = None  # None: the registry itself makes its findings (target, ...)
    ok: str | None = None  # the summary when nothing is found; None: no finding then
    # Collector params that act as this check's thresholds: (collector, param).
    params: tuple[tuple[str, str], ...] = ()


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


def literal(text: str) -> str:
    """A string as an SQL literal (standard_conforming_strings, on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


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
        return human_milliseconds(value)  # never `0 ms` for a real sub-millisecond value
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} days"


def percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def level(value: float, warning: float, critical: float | None = None) -> Severity | None:
    if critical is not None and value >= critical:
        return Severity.CRITICAL
    if value >= warning:
        return Severity.WARNING
    return None


def relation(sample: Sample, name_label: str = "relname") -> str:
    return qualified(sample["schemaname"], sample[name_label])


def same(samples: Samples, name: str, sample: Sample, *labels: str) -> float | None:
    """The value of metric `name` for the object `sample` is about (matched on `labels`)."""
    return samples.get(name, **{label: sample[label] for label in labels})


TABLE = ("datname", "schemaname", "relname")
