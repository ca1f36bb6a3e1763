"""One collector's SQL on one connection: choose its branches for the server, run them, and
turn the rows into metric families."""

import contextlib
import datetime as dt
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg

from exporter.catalogue import Branch, Collector, Column, Query, Usage
from exporter.collection.rowcap import RowKey, cap_rows
from exporter.errors import CollectorFailed, CollectorUnavailable
from exporter.exposition.render import FamilyWriter, RenderedFamily, label_set
from exporter.targets.facts import ServerFacts
from exporter.targets.sessions import set_statement_timeout

_IGNORED = Column(usage=Usage.IGNORE)


@dataclass(frozen=True)
class Plan:
    """The SQL a collector runs on one server: one branch per query."""

    steps: tuple[tuple[Query, Branch], ...]


def plan(collector: Collector, facts: ServerFacts, extensions: frozenset[str]) -> Plan:
    """Pick each query's branch for this server, or say why the collector cannot run."""
    requires = collector.spec.requires
    if facts.preload is not None:
        missing = [lib for lib in requires.preload if lib not in facts.preload]
        if missing:
            return _unavailable(f"{', '.join(missing)} not in shared_preload_libraries")
    missing = [ext for ext in requires.extensions if ext not in extensions]
    if missing:
        return _unavailable(f"extension {', '.join(missing)} not installed (CREATE EXTENSION)")
    missing = [role for role in requires.roles if not facts.has_role(role)]
    if missing:
        return _unavailable(
            f"role is not a member of {', '.join(missing)}: GRANT pg_monitor TO "
            f"{_identifier(facts.user)}"
        )
    steps = []
    for query in collector.spec.queries:
        branch = query.branch_for(facts.version_num)
        if branch is not None:
            steps.append((query, branch))
    if not steps:
        product = "PgBouncer" if collector.spec.target_type == "pgbouncer" else "PostgreSQL"
        return _unavailable(f"not available on {product} {facts.version}")
    return Plan(steps=tuple(steps))


def _identifier(name: str) -> str:
    """A role name as SQL needs it written: quoted unless it is plain lower case."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _unavailable(reason: str) -> Plan:
    raise CollectorUnavailable(reason)


@dataclass
class Ran:
    """What a run of the plan produced, and how long its statements kept the server busy
    (each sent to its last row received, on our clock; turning rows into text does not
    count)."""

    families: list[RenderedFamily]
    busy_seconds: float
    # What the run costs on average, for the database-time budget: busy_seconds, but with a
    # query of a slower cadence of its own counted at its share of every run (see
    # QueryMemory.costs), so that the runs that skip it do not look like the collector's cost.
    priced_seconds: float


@dataclass
class QueryMemory:
    """What a collector's queries remember from one run to the next, in one database."""

    # What each capped query chose last time, by query name: see rowcap.py.
    chosen: dict[str, frozenset[RowKey]] = field(default_factory=dict)
    # Queries with an interval of their own: when each last ran, and what it published.
    results: dict[str, tuple[float, list[RenderedFamily]]] = field(default_factory=dict)
    # ... and what each cost when it last ran. A run is charged a share of it, the time since
    # the run before over the query's interval (at most all of it): a collector every minute
    # with a 10-minute query pays a tenth of it each run, which the ten runs add up to.
    costs: dict[str, float] = field(default_factory=dict)
    last_run: float | None = None  # monotonic: when the previous run started

    def share(self, query: str, interval: float, since_last: float | None) -> float:
        cost = self.costs.get(query, 0.0)
        return cost if since_last is None else cost * min(1.0, since_last / interval)


def run(
    conn: psycopg.Connection[tuple[object, ...]],
    collector: Collector,
    steps: Plan,
    *,
    labels: dict[str, str],
    timeout_seconds: float,
    memory: QueryMemory,
    databases: int = 1,
) -> Ran:
    """Run the plan in one read-only transaction bounded by the collector's timeout.

    `memory` carries the capped queries' choices and the slower queries' last results from
    one run to the next (updated here). `databases`: how many the collector visits on this
    target, which share a per-target cap (Limit.target_max_rows).
    """
    spec = collector.spec
    families: list[RenderedFamily] = []
    postgres = spec.target_type == "postgres"
    # The time of the catalogue's statements; BEGIN, SET LOCAL and COMMIT cost the server next
    # to nothing, and on a busy client their round trips would be mostly the client's own delay.
    busy = priced = 0.0
    started = time.monotonic()
    since_last = None if memory.last_run is None else started - memory.last_run
    memory.last_run = started
    # PgBouncer's console has neither transactions nor settings; its SHOWs answer from memory.
    with conn.transaction() if postgres else contextlib.nullcontext():
        if postgres:
            set_statement_timeout(conn, timeout_seconds)
        for query, branch in steps.steps:
            last = memory.results.get(query.name)
            now = time.monotonic()
            if query.interval is not None and last is not None and now - last[0] < query.interval:
                families.extend(last[1])  # not due: its figure cannot have changed much
                priced += memory.share(query.name, query.interval, since_last)
                continue
            # The SQL is the catalogue's own text, not built from input: run it as written,
            # with the collector's params (if any) bound by the driver.
            text = branch.sql.encode()
            params = spec.params
            max_rows = spec.max_rows(query.limit, databases) if query.limit else 0
            if query.limit is not None and isinstance(query.limit.max_rows, str):
                # The SQL ranks and caps with the same param: this database's share of it.
                params = {**params, query.limit.max_rows: max_rows}
            cursor = conn.execute(text, params) if params else conn.execute(text)
            # The server's part ends here: libpq has every row; turning them into Python
            # objects below is the exporter's own time.
            cost = time.monotonic() - now
            busy += cost
            if query.interval is None:
                priced += cost
            else:
                memory.costs[query.name] = cost
                priced += memory.share(query.name, query.interval, since_last)
            aliases = query.aliases  # a column another version names differently
            columns = [aliases.get(c.name, c.name) for c in cursor.description or ()]
            rows = cursor.fetchall()
            if query.limit is not None:
                key_columns = [
                    c for c in columns if query.metrics.get(c, _IGNORED).usage is Usage.LABEL
                ]
                rows, memory.chosen[query.name] = cap_rows(
                    query.limit,
                    max_rows,
                    columns,
                    rows,
                    key_columns,
                    memory.chosen.get(query.name, frozenset()),
                )
            published = to_families(collector, query, columns, rows, labels)
            if query.interval is not None:
                memory.results[query.name] = (now, published)
            families.extend(published)
    return Ran(families, busy, priced)


def to_families(
    collector: Collector,
    query: Query,
    columns: list[str],
    rows: list[tuple[object, ...]],
    labels: dict[str, str],
) -> list[RenderedFamily]:
    """Map result rows straight to exposition text per the query's column usages.

    No object per sample: each row's label set is written once and shared by the metrics that
    carry the same labels.
    """
    unmapped = [c for c in columns if c not in query.metrics]
    # SHOW cannot select columns and PgBouncer adds some in minor releases, so there a new
    # column is ignored; SQL collectors keep the strict rule, which catches typos.
    if unmapped and collector.spec.target_type != "pgbouncer":
        raise CollectorFailed(
            f"query {query.name!r}: column(s) {', '.join(unmapped)} not mapped "
            "(map them, or give them usage: ignore)"
        )
    # A custom collector's mapped column that the query does not return would publish nothing,
    # silently (a typo in an alias). Built-ins map every server version's columns, and an older
    # server lacks some by design (the catalogue's tests run on each major).
    absent = [
        c for c, m in query.metrics.items() if c not in columns and m.usage is not Usage.IGNORE
    ]
    if absent and not collector.builtin and collector.spec.target_type != "pgbouncer":
        raise CollectorFailed(
            f"query {query.name!r}: mapped column(s) {', '.join(absent)} not in the result"
        )
    usage = {c: query.metrics.get(c, _IGNORED).usage for c in columns}
    label_columns = [c for c in columns if usage[c] is Usage.LABEL]
    label_names = [*labels, *(query.metrics[c].name or c for c in label_columns)]
    clashes = set(labels) & set(label_names[len(labels) :])
    if clashes:
        raise CollectorFailed(f"query {query.name!r}: label(s) {', '.join(clashes)} set twice")
    value_columns = [c for c in columns if usage[c] in (Usage.GAUGE, Usage.COUNTER)]
    families: dict[str, FamilyWriter] = {}
    # The positions in label_names of the labels each metric carries (`labels:` narrows them).
    carried: dict[str, tuple[int, ...]] = {}
    for column in value_columns:
        spec = query.metrics[column]
        # In label name order, as prometheus_client writes them.
        carried[column] = tuple(
            sorted(
                (
                    i
                    for i, c in enumerate([*labels, *label_columns])
                    if i < len(labels) or spec.labels is None or c in spec.labels
                ),
                key=lambda i: label_names[i],
            )
        )
        families[column] = FamilyWriter(
            collector.metric_name(column, spec),
            spec.help or f"{column} from {collector.name}",
            counter=spec.usage is Usage.COUNTER,
        )
    index = {c: i for i, c in enumerate(columns)}
    value_at = [(c, index[c], query.metrics[c]) for c in value_columns]
    label_at = [index[c] for c in label_columns]
    seen: set[tuple[str, ...]] = set()
    # Label sets published so far by each metric that `labels:` narrows: two rows unique as a
    # whole may share them. The others carry every label, which `seen` already checks.
    everything = len(label_names)
    narrowed: dict[str, set[tuple[str, ...]]] = {
        c: set() for c in value_columns if len(carried[c]) < everything
    }
    fixed = tuple(labels.values())
    for row in rows:
        label_values = (*fixed, *(_label_value(row[i]) for i in label_at))
        if label_values in seen:
            shared = dict(zip(label_names, label_values, strict=True))
            raise CollectorFailed(f"query {query.name!r}: two rows share the labels {shared}")
        seen.add(label_values)
        label_texts: dict[tuple[int, ...], str] = {}  # one label set per narrowing, per row
        for column, at, spec in value_at:
            value = _value(row, at, index, spec)
            if value is None:
                continue
            positions = carried[column]
            own = tuple(label_values[i] for i in positions)
            if column in narrowed:
                if own in narrowed[column]:
                    shared = {label_names[i]: label_values[i] for i in positions}
                    raise CollectorFailed(
                        f"query {query.name!r}: two rows give {column!r} the labels {shared}"
                    )
                narrowed[column].add(own)
            text = label_texts.get(positions)
            if text is None:
                text = label_texts[positions] = label_set([label_names[i] for i in positions], own)
            families[column].add(text, value)
    return [f.rendered() for f in families.values() if f.series]


def _value(row: tuple[object, ...], at: int, index: dict[str, int], spec: Column) -> float | None:
    """The column's scaled value plus the columns it adds (those this version has)."""
    value = _number(row[at])
    if value is None:
        return None
    total = value * spec.scale
    for other, factor in spec.add.items():
        extra = _number(row[index[other]]) if other in index else None
        total += 0.0 if extra is None else extra * factor
    return total


def _label_value(value: object) -> str:
    return "" if value is None else str(value)


def _number(value: object) -> float | None:
    """A float for a sample, None for SQL NULL (the sample is left out, never published as 0)."""
    match value:
        case None:
            return None
        case bool():
            return 1.0 if value else 0.0
        case int() | float() | Decimal():
            return float(value)
        case dt.datetime():
            return value.timestamp()
        case dt.timedelta():
            return value.total_seconds()
        case _:
            raise CollectorFailed(f"value {value!r} is not a number")
