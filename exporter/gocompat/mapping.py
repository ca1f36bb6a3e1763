"""mapping.yaml as validated objects: which of our metrics replaces each of the Go exporter's.

The one source of docs/migrating-from-postgres_exporter.md's tables (gocompat.guide), of what
`compat: postgres_exporter` publishes (exposition.compat, from `conversion`), and of the tests
that keep them true (every name of ours exists; every Go name is listed).
"""

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

MAPPING_FILE = Path(__file__).with_name("mapping.yaml")
# libyaml's parser when PyYAML has it: the file is read at every start (the CLI's flags).
_FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class MetricMapping(BaseModel):
    """One Go metric name (or a glob of names) and ours, or why there is none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    go: str
    collector: str
    ours: str | None = None
    promql: str | None = None
    note: str = ""
    why: str = ""
    releases: Literal["0.11+", "later"] = "0.11+"
    go_type: Literal["counter", "gauge", "untyped"] | None = None
    compat: bool = True
    # Their labels that the switch does not publish (besides `datid`, which none has).
    labels_not_ours: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _ours_or_why(self) -> "MetricMapping":
        # An exception without a reason would be a gap, not a decision.
        if (self.ours is None) == (not self.why):
            raise ValueError(f"{self.go}: give `ours`, or `why` there is none, not both")
        if self.promql is not None and self.ours is None:
            raise ValueError(f"{self.go}: `promql` needs `ours`")
        return self

    @property
    def is_glob(self) -> bool:
        return "*" in self.go

    def matches(self, name: str) -> bool:
        return fnmatchcase(name, self.go) if self.is_glob else name == self.go

    @property
    def their_type(self) -> str:
        return self.go_type or ("counter" if self.go.endswith("_total") else "gauge")

    def conversion(self) -> "Conversion | None":
        """How `compat: postgres_exporter` publishes this name from ours: renamed, scaled
        (their milliseconds) or summed over the labels theirs has. None when it takes more
        than that (`time() -`, a join), or when there is nothing to rename."""
        if self.ours is None or self.is_glob or self.go == self.ours or not self.compat:
            return None
        if self.promql is None:
            return Conversion(self.ours)
        ours = re.escape(self.ours)
        scaled = re.fullmatch(rf"{ours} \* (\d+)", self.promql)
        if scaled:
            return Conversion(self.ours, factor=float(scaled.group(1)))
        summed = re.fullmatch(rf"sum by \(([\w, ]+)\) \({ours}\)", self.promql)
        if summed:
            return Conversion(self.ours, sum_by=tuple(summed.group(1).replace(" ", "").split(",")))
        return None


@dataclass(frozen=True)
class Conversion:
    """Their series from one of ours: renamed, times `factor`, summed by `sum_by` labels."""

    ours: str
    factor: float = 1.0
    sum_by: tuple[str, ...] | None = None


class CollectorMapping(BaseModel):
    """Their collector, and ours that covers it; `flag`: their --[no-]collector.NAME is ours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    go: str
    ours: str | None = None
    flag: bool = False
    note: str = ""

    @model_validator(mode="after")
    def _flag_needs_ours(self) -> "CollectorMapping":
        if self.flag and self.ours is None:
            raise ValueError(f"{self.go}: `flag` needs `ours`")
        return self


class FlagMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    go: str
    ours: str
    note: str = ""


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: tuple[MetricMapping, ...]
    collectors: tuple[CollectorMapping, ...] = ()
    flags: tuple[FlagMapping, ...]

    @model_validator(mode="after")
    def _listed_once(self) -> "Mapping":
        names = [m.go for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"listed twice: {', '.join(twice)}")
        return self

    def collector_flags(self) -> dict[str, str]:
        """Their collector name -> ours, for the --[no-]collector.NAME flags accepted."""
        return {c.go: c.ours for c in self.collectors if c.flag and c.ours is not None}

    def renames(self) -> dict[str, list[tuple[MetricMapping, Conversion]]]:
        """Our metric name -> the Go names published from it, each with how."""
        found: dict[str, list[tuple[MetricMapping, Conversion]]] = {}
        for m in self.metrics:
            conversion = m.conversion()
            if conversion is not None:
                found.setdefault(conversion.ours, []).append((m, conversion))
        return found

    def find(self, name: str) -> MetricMapping | None:
        """The entry for a Go metric name: its own, else the first glob matching it."""
        exact = [m for m in self.metrics if not m.is_glob and m.go == name]
        return next(iter(exact), None) or next(
            (m for m in self.metrics if m.is_glob and m.matches(name)), None
        )


@cache
def load_mapping() -> Mapping:
    return Mapping.model_validate(yaml.load(MAPPING_FILE.read_text(), Loader=_FAST_YAML_LOADER))
