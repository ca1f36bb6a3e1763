"""What a health report is made of: findings with a severity, per target, and their JSON form.

The JSON form is the documented, stable output of `pg-health-exporter report --format json`
(docs/report.schema.json); change it only together with that schema and its `version`.
"""

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter import __version__

# Bumped when the JSON form changes incompatibly (a field removed or its meaning changed).
JSON_FORMAT = "pg-health-exporter-report"
JSON_VERSION = 1


class Severity(StrEnum):
    """How bad a finding is; `critical` makes the report exit non-zero."""

    CRITICAL = "critical"  # act now: outage or data loss risk; the report exits 1
    WARNING = "warning"  # wastes resources or will hurt; fix when convenient
    INFO = "info"  # worth knowing, or the check could not judge (and says why)
    OK = "ok"  # checked, nothing found

    @property
    def rank(self) -> int:
        """0 for the most severe, so sorting by rank puts critical findings first."""
        return list(Severity).index(self)


Value = float | int | str | None


@dataclass(frozen=True)
class Finding:
    """One judgement about one object (or one target or database, when `object` is None)."""

    check: str  # the name of a check in checks.CHECKS
    severity: Severity
    target: str
    summary: str  # one line: what was found
    database: str | None = None
    object: str | None = None  # schema.name, a queryid, a setting, ...
    detail: str = ""  # why it matters, how it was measured, what is not known
    fix: str | None = None  # SQL that fixes it, ready to run (each statement ends in ";")
    advice: str = ""  # what to do where no statement can be given, or besides it
    values: Mapping[str, Value] = field(default_factory=dict)  # the numbers judged
    # The order within a check where one matters more than names (statements: total time).
    position: int = field(default=0, compare=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.value,
            "target": self.target,
            "database": self.database,
            "object": self.object,
            "summary": self.summary,
            "detail": self.detail,
            "fix": self.fix,
            "advice": self.advice,
            # JSON has no NaN or infinity: such a number is unknown, like a missing one.
            "values": {k: _finite(v) for k, v in self.values.items()},
        }


def _finite(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class TargetInfo:
    """What the report knows about a target it collected from."""

    name: str
    up: bool
    type: str = "postgres"  # or pgbouncer
    server_version: str | None = None
    databases: tuple[str, ...] = ()  # the databases per-database checks visited
    message: str = ""  # why it is down

    @property
    def product(self) -> str:
        return "PgBouncer" if self.type == "pgbouncer" else "PostgreSQL"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "up": self.up,
            "type": self.type,
            "server_version": self.server_version,
            "databases": list(self.databases),
            "message": self.message,
        }


@dataclass(frozen=True)
class Report:
    """Findings in the stable order (checks.sort_key): most severe first, then by check."""

    targets: tuple[TargetInfo, ...]
    findings: tuple[Finding, ...]
    thresholds: Mapping[str, float]
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def exit_code(self) -> int:
        """1 when any finding is critical (a CI or deploy gate), else 0."""
        return 1 if any(f.severity is Severity.CRITICAL for f in self.findings) else 0

    def counts(self) -> dict[Severity, int]:
        found = dict.fromkeys(Severity, 0)
        for finding in self.findings:
            found[finding.severity] += 1
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "exporter_version": __version__,
            "generated_at": self.generated_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "exit_code": self.exit_code,
            "summary": {s.value: n for s, n in self.counts().items()},
            "thresholds": dict(self.thresholds),
            "targets": [t.as_json() for t in self.targets],
            "findings": [f.as_json() for f in self.findings],
        }
