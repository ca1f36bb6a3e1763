"""The collector format: SQL plus the mapping of its columns to metric families, as data.

Built-in collectors live in `exporter/catalogue/builtin/<name>.yaml`; users add their own under
`collectors:` in config.yaml in the same format. The collector's name is its file name, its
config key, its `--collector.<name>` switch and its metric prefix (`pg_<name>_...`).
"""

import itertools
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from exporter.units import Duration

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
# Labels the exporter adds itself; a query may not produce them.
RESERVED_LABELS = frozenset({"target"})
# The shortest interval a collector (or the probe) may run at: a 1 ms one would put about 900
# queries a second on the server, and no scrape reads data that fresh.
MIN_INTERVAL = 1.0


class Usage(StrEnum):
    """What a result column becomes."""

    GAUGE = "gauge"  # a point-in-time value
    COUNTER = "counter"  # a cumulative value; published with a `_total` suffix
    LABEL = "label"  # a label on every metric of the row
    IGNORE = "ignore"  # read but not published (e.g. a column used only for sorting)


class StatementText(BaseModel):
    """A label column holding SQL text: secrets masked by lexing it as PostgreSQL does,
    whitespace collapsed, cut to `max_length` characters (collection/sqltext.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int | str = Field(description="a number, or the name of one of the params")


def _column_shorthand(value: Any) -> Any:
    # `datname: label` is shorthand for `datname: {usage: label}`.
    return {"usage": value} if isinstance(value, str) else value


class Column(BaseModel):
    """How one result column is published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usage: Usage
    name: str | None = Field(
        default=None, description="metric name after the collector prefix, or label name"
    )
    help: str = ""
    unit: str | None = Field(default=None, description="base unit: seconds, bytes, ratio, ...")
    scale: float = Field(default=1.0, description="multiplier, e.g. 0.001 for milliseconds")
    # A query may publish per-object and per-database figures together (one statement, e.g.
    # when both come from one expensive scan): a metric then names the label columns it has.
    labels: tuple[str, ...] | None = Field(
        default=None, description="the query's label columns this metric carries (default: all)"
    )
    # For SHOW commands (PgBouncer), whose columns SQL cannot combine or rename:
    add: dict[str, float] = Field(
        default_factory=dict,
        description="other columns added to the value, times a factor (maxwait_us: 1.0e-6)",
    )
    aliases: tuple[str, ...] = Field(
        default=(), description="names this column has in other versions (reserve_pool)"
    )
    statement: StatementText | None = Field(
        default=None, description="label only: the column is SQL text (secrets masked)"
    )


ColumnSpec = Annotated[Column, BeforeValidator(_column_shorthand)]


class Branch(BaseModel):
    """SQL for a range of server versions (`server_version_num`, min inclusive, max exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str
    min_version: int | None = None
    max_version: int | None = None

    def applies_to(self, version_num: int) -> bool:
        return (self.min_version is None or version_num >= self.min_version) and (
            self.max_version is None or version_num < self.max_version
        )

    @model_validator(mode="after")
    def _range_not_empty(self) -> "Branch":
        if (
            self.min_version is not None
            and self.max_version is not None
            and self.min_version >= self.max_version
        ):
            raise ValueError("min_version must be lower than max_version")
        return self


class Limit(BaseModel):
    """A cap on the rows (objects) a per-object query publishes, designed not hoped for.

    Kept: every row where `keep_when` is true (the objects a health check flags), the top
    `max_rows` by each `rank_by` column, and with `sticky`, rows selected last time that are
    still within twice `max_rows` by any rank, so series do not churn at the boundary.

    With `ranked`, the SQL has done the ranking itself: each `rank_by` column holds the row's
    rank among all objects (1 = first), and the query returns only the rows the cap can keep
    (flagged, or within twice `max_rows` by some rank). Then only those rows cross the wire,
    and costly columns (sizes) can be computed for them alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int | str = Field(description="a number, or the name of one of the params")
    # A server with hundreds of databases must not publish hundreds of times the top N: with
    # this, the databases a per-database collector visits share it, each keeping its top
    # max(1, target_max_rows // databases) (never more than max_rows). Flagged rows are kept
    # whatever the share.
    target_max_rows: int | str | None = Field(
        default=None, description="a number, or the name of one of the params"
    )
    rank_by: tuple[str, ...] = Field(min_length=1)
    keep_when: str | None = None
    sticky: bool = True
    ranked: bool = Field(default=False, description="rank_by columns hold ranks from the SQL")


class Query(BaseModel):
    """One statement (or one per version range) and what its columns become."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="main", pattern=NAME_PATTERN)
    sql: str | None = None
    min_version: int | None = None
    max_version: int | None = None
    branches: tuple[Branch, ...] = ()
    metrics: dict[str, ColumnSpec]
    limit: Limit | None = None
    # For a figure that cannot change fast but is costly to read (a sum of every relation's
    # size): run this query at most this often, publishing its last result in between.
    interval: Duration | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "Query":
        if (self.sql is None) == (not self.branches):
            raise ValueError("give either `sql` or `branches`, not both")
        if self.branches and (self.min_version is not None or self.max_version is not None):
            raise ValueError("put min_version/max_version on each branch")
        _check_no_overlap(self.alternatives)
        if not any(c.usage in (Usage.GAUGE, Usage.COUNTER) for c in self.metrics.values()):
            raise ValueError("metrics: map at least one column as gauge or counter")
        for column, spec in self.metrics.items():
            published = spec.name or column
            if spec.usage is Usage.LABEL and published in RESERVED_LABELS:
                raise ValueError(f"metrics.{column}: label name {published!r} is reserved")
            for other in spec.add:
                if other == column or other not in self.metrics:
                    raise ValueError(f"metrics.{column}.add: {other!r} is not another column")
            for alias in spec.aliases:
                if alias in self.metrics:
                    raise ValueError(f"metrics.{column}.aliases: {alias!r} is mapped itself")
            if spec.statement is not None and spec.usage is not Usage.LABEL:
                raise ValueError(f"metrics.{column}.statement: only for a label column")
            for label in spec.labels or ():
                if self.metrics.get(label, Column(usage=Usage.IGNORE)).usage is not Usage.LABEL:
                    raise ValueError(f"metrics.{column}.labels: {label!r} is not a label column")
        if self.limit is not None:
            named = [*self.limit.rank_by, *([self.limit.keep_when] if self.limit.keep_when else [])]
            for column in named:
                if column not in self.metrics:
                    raise ValueError(f"limit: {column!r} is not a mapped column")
        return self

    @property
    def alternatives(self) -> tuple[Branch, ...]:
        """The version branches; the single-SQL form is one branch."""
        if self.sql is None:
            return self.branches
        return (Branch(sql=self.sql, min_version=self.min_version, max_version=self.max_version),)

    @property
    def aliases(self) -> dict[str, str]:
        """Other versions' column names, to the mapped names they stand for."""
        return {alias: c for c, spec in self.metrics.items() for alias in spec.aliases}

    def branch_for(self, version_num: int) -> Branch | None:
        return next((b for b in self.alternatives if b.applies_to(version_num)), None)


def _check_no_overlap(branches: tuple[Branch, ...]) -> None:
    ordered = sorted(branches, key=lambda b: b.min_version or 0)
    for earlier, later in itertools.pairwise(ordered):
        earlier_end = earlier.max_version if earlier.max_version is not None else 10**9
        if (later.min_version or 0) < earlier_end:
            raise ValueError(
                f"version ranges overlap: [{earlier.min_version}, {earlier.max_version}) and "
                f"[{later.min_version}, {later.max_version})"
            )


class Requirements(BaseModel):
    """What the server or the monitoring role must have for the collector to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extensions: tuple[str, ...] = ()  # CREATE EXTENSION'd in the database queried
    preload: tuple[str, ...] = ()  # in shared_preload_libraries
    roles: tuple[str, ...] = ()  # role membership, e.g. pg_read_all_stats (superuser passes)


class CollectorSpec(BaseModel):
    """A complete collector definition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    help: str
    # What kind of target it runs on. PgBouncer collectors read the admin console (SHOW ...).
    target_type: Literal["postgres", "pgbouncer"] = "postgres"
    scope: Literal["server", "database"] = "server"
    interval: Duration = 60.0
    timeout: Duration = 10.0
    enabled: bool = True
    databases: tuple[str, ...] | None = Field(
        default=None,
        description="per-database scope only: regular expressions of the databases to visit",
    )
    requires: Requirements = Requirements()
    # Tunables passed to the SQL as %(name)s placeholders (write a literal % as %%) and usable
    # as a limit's max_rows; config.yaml may change their values, not add new ones.
    params: dict[str, int | float | str] = Field(default_factory=dict)
    queries: tuple[Query, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "CollectorSpec":
        if self.interval < MIN_INTERVAL:
            raise ValueError(f"interval must be at least {MIN_INTERVAL:g}s")
        if self.timeout > self.interval:
            raise ValueError("timeout must not be longer than interval")
        if self.databases is not None and self.scope != "database":
            raise ValueError("databases: only for collectors with scope: database")
        if self.target_type == "pgbouncer" and (self.scope != "server" or self.requires.roles):
            raise ValueError("pgbouncer collectors have scope: server and no requires")
        seen: set[str] = set()
        for query in self.queries:
            if query.name in seen:
                raise ValueError(f"queries: two queries are named {query.name!r}")
            seen.add(query.name)
            limit = query.limit
            caps = {} if limit is None else {"max_rows": limit.max_rows}
            if limit is not None and limit.target_max_rows is not None:
                if self.scope != "database":
                    raise ValueError(
                        f"queries.{query.name}.limit.target_max_rows: only for scope: database"
                    )
                caps["target_max_rows"] = limit.target_max_rows
            for key, cap in caps.items():
                if isinstance(cap, str) and not isinstance(self.params.get(cap), int):
                    raise ValueError(
                        f"queries.{query.name}.limit.{key}: not the name of an integer param"
                    )
            for column, spec in query.metrics.items():
                length = spec.statement.max_length if spec.statement is not None else 0
                if isinstance(length, str) and not isinstance(self.params.get(length), int):
                    raise ValueError(
                        f"queries.{query.name}.metrics.{column}.statement.max_length: "
                        "not the name of an integer param"
                    )
        return self

    def max_rows(self, limit: Limit, databases: int = 1) -> int:
        """The rows a database publishes by each rank: max_rows, or with target_max_rows, its
        share among the `databases` visited (at least one)."""
        per_database = self._integer(limit.max_rows)
        per_target = self.target_max_rows(limit)
        if per_target is None:
            return per_database
        return max(1, min(per_database, per_target // max(databases, 1)))

    def target_max_rows(self, limit: Limit) -> int | None:
        """The rows all the databases of a target publish by each rank together, if capped."""
        cap = limit.target_max_rows
        return None if cap is None else self._integer(cap)

    def _integer(self, value: int | str) -> int:
        """A number, or the value of the integer param it names."""
        return value if isinstance(value, int) else int(self.params[value])

    def statement_columns(self) -> dict[str, int]:
        """Result column name (other versions' names too) -> max length, for the label
        columns holding SQL text."""
        found = {}
        for query in self.queries:
            for column, spec in query.metrics.items():
                if spec.statement is not None:
                    length = spec.statement.max_length
                    for name in (column, *spec.aliases):
                        found[name] = (
                            length if isinstance(length, int) else int(self.params[length])
                        )
        return found


class CollectorOverride(BaseModel):
    """What config.yaml may change on a built-in collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    params: dict[str, int | float | str] | None = None


class Collector(BaseModel):
    """A named collector as the scheduler runs it."""

    model_config = ConfigDict(frozen=True)

    name: str
    spec: CollectorSpec
    builtin: bool

    @property
    def prefix(self) -> str:
        # PgBouncer's metrics are its own family (pgbouncer_...), named for the collector.
        return self.name if self.spec.target_type == "pgbouncer" else f"pg_{self.name}"

    def metric_name(self, column: str, spec: Column) -> str:
        base = f"{self.prefix}_{spec.name or column}"
        if spec.usage is Usage.COUNTER and not base.endswith("_total"):
            base += "_total"
        return base
