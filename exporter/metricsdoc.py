"""METRICS.md, generated from the catalogue so the reference cannot drift from the code.

python -m exporter.metricsdoc > METRICS.md      (or: make metrics-doc)
"""

import re
import sys

from exporter.catalogue import Branch, Collector, Query, Usage, builtin_specs
from exporter.config import DEFAULT_DATABASE_TIME_BUDGET
from exporter.exposition.selfmetrics import (
    CONNECTION_STATS,
    POOL_STATS,
    WORKER_STATS,
    connection_metrics,
    self_metrics,
    worker_metrics,
)
from exporter.status import CollectorStatus, Reachability, State, TargetStatus
from exporter.units import format_duration

_HEADER = """# Metrics

Generated from the collector catalogue (`exporter/catalogue/builtin/*.yaml`) by
`python -m exporter.metricsdoc`; a test fails when this file is out of date. Do not edit by
hand.

Every series carries `target` (the target's name in config.yaml). Collectors with
`scope: database` run in every database of a target and add `datname`. Versions are
PostgreSQL's `server_version_num` ranges in which a metric exists (PgBouncer's version for
`pgbouncer_` collectors).
"""


def _version(number: int, pgbouncer: bool) -> str:
    if pgbouncer:
        return f"{number // 10000}.{number // 100 % 100}"
    return str(number // 10000)


def _versions(branches: list[Branch], pgbouncer: bool) -> str:
    """Human ranges, e.g. `13+`, `14+`, `13-16`: contiguous branches are merged."""
    if not branches:
        return "-"
    spans: list[list[int | None]] = []
    for branch in sorted(branches, key=lambda b: b.min_version or 0):
        if spans and spans[-1][1] is not None and (branch.min_version or 0) <= spans[-1][1]:
            spans[-1][1] = branch.max_version
        else:
            spans.append([branch.min_version, branch.max_version])
    parts = []
    for low_num, high_num in spans:
        low = _version(low_num, pgbouncer) if low_num else "any"
        if high_num is None:
            parts.append(f"{low}+")
        else:
            high = _version(high_num - 1, pgbouncer)
            parts.append(low if low == high else f"{low}-{high}")
    return ", ".join(parts)


def _branches_with(query: Query, column: str) -> list[Branch]:
    # A column exists on the versions whose SQL mentions it (as a name or an alias).
    names = (column, *query.metrics[column].aliases)

    def has(branch: Branch) -> bool:
        if branch.sql.lstrip().upper().startswith("SHOW "):
            return True  # PgBouncer's SHOW names no columns: assume every version has it
        return any(re.search(rf"\b{re.escape(n)}\b", branch.sql) for n in names)

    return [b for b in query.alternatives if has(b)]


def _collector_section(collector: Collector) -> list[str]:
    spec = collector.spec
    pgbouncer = spec.target_type == "pgbouncer"
    facts = [
        f"scope: {spec.scope}",
        f"interval: {format_duration(spec.interval)}",
        f"timeout: {format_duration(spec.timeout)}",
    ]
    if pgbouncer:
        facts.append("targets: `type: pgbouncer`")
    if not spec.enabled:
        facts.append("**disabled by default**")
    needs = [*spec.requires.extensions, *spec.requires.preload, *spec.requires.roles]
    if needs:
        facts.append("needs: " + ", ".join(f"`{n}`" for n in dict.fromkeys(needs)))
    if spec.params:
        facts.append("params: " + ", ".join(f"`{k}={v}`" for k, v in spec.params.items()))
    lines = [f"## `{collector.name}`", "", spec.help, "", " · ".join(facts), ""]
    lines += ["| metric | type | labels | versions | help |", "|---|---|---|---|---|"]
    base = ["target", *(["datname"] if spec.scope == "database" else [])]
    for query in spec.queries:
        labels = [
            spec_.name or column
            for column, spec_ in query.metrics.items()
            if spec_.usage is Usage.LABEL
        ]
        for column, column_spec in query.metrics.items():
            if column_spec.usage not in (Usage.GAUGE, Usage.COUNTER):
                continue
            name = collector.metric_name(column, column_spec)
            versions = _versions(_branches_with(query, column), pgbouncer)
            help_text = column_spec.help.replace("|", "\\|")
            own = labels
            if column_spec.labels is not None:
                own = [query.metrics[c].name or c for c in column_spec.labels]
            lines.append(
                f"| `{name}` | {column_spec.usage.value} | {', '.join(base + own)} "
                f"| {versions} | {help_text} |"
            )
    if any(q.limit for q in spec.queries):
        lines += ["", _limit_note(collector)]
    return [*lines, ""]


def _limit_note(collector: Collector) -> str:
    notes = []
    for query in collector.spec.queries:
        if query.limit is None:
            continue
        limit = query.limit
        text = (
            f"Query `{query.name}` publishes at most the top {collector.spec.max_rows(limit)} "
            f"rows by each of {', '.join(f'`{c}`' for c in limit.rank_by)}"
        )
        total = collector.spec.target_max_rows(limit)
        if total is not None:
            text += (
                f" in each database, and {total} by each in all the databases of a target"
                f" together (each database's share: {total} / databases, at least 1)"
            )
        if limit.keep_when:
            text += f", plus every row flagged by `{limit.keep_when}`"
        if limit.sticky:
            text += "; rows stay while within twice that rank (no churn at the boundary)"
        notes.append(text + ".")
    return " ".join(notes)


def _self_section() -> list[str]:
    example = {
        "<target>": TargetStatus(
            reach=Reachability(up=True, not_visited=(("<datname>", "<reason>"),)),
            collectors={
                "<collector>": CollectorStatus(state=State.OK, last_success=0.0, interval=60.0)
            },
            pool={key: 0 for key in POOL_STATS},
            budget=DEFAULT_DATABASE_TIME_BUDGET,
        )
    }
    lines = [
        "## The exporter itself",
        "",
        "Always present, never stale.",
        "",
        "| metric | type | labels | help |",
        "|---|---|---|---|",
    ]
    for family in render_families_for_doc(example):
        lines.append(family)
    return [*lines, ""]


def render_families_for_doc(example: dict[str, TargetStatus]) -> list[str]:
    rows = []
    pools = {"<pool>": {key: 0.0 for key in WORKER_STATS}}
    connections = dict.fromkeys(CONNECTION_STATS, 0)
    for rendered in [
        *self_metrics(example),
        *worker_metrics(pools),
        *connection_metrics(connections),
    ]:
        header = rendered.header.decode().splitlines()
        help_text = header[0].split(" ", 3)[3] if len(header[0].split(" ", 3)) > 3 else ""
        kind = header[1].split(" ")[3]
        first_sample = rendered.samples.decode().splitlines()[0]
        name = first_sample.split("{")[0].split(" ")[0]
        labels = re.findall(r'(\w+)="', first_sample)
        rows.append(f"| `{name}` | {kind} | {', '.join(labels)} | {help_text} |")
    return rows


def metrics_doc() -> str:
    builtins = [Collector(name=n, spec=s, builtin=True) for n, s in builtin_specs().items()]
    lines = [_HEADER]
    lines += ["| collector | help |", "|---|---|"]
    lines += [f"| [`{c.name}`](#{c.name}) | {c.spec.help} |" for c in builtins]
    lines.append("")
    for collector in builtins:
        lines += _collector_section(collector)
    lines += _self_section()
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(metrics_doc())
