"""What can be told wrong about a collector without a server to run it on.

Metric and label names, SQL mistakes (empty, unknown params, a bare `%`), names that one
collector would publish over another's, and mappings that would publish identical series (a
label name used twice, or the exporter's own): each found here exits with code 2 at start-up
instead of failing every interval or breaking the exposition.
"""

import re

from exporter.catalogue.spec import Collector, Query, Usage

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def check_metric_names(collector: Collector) -> list[str]:
    """Problems with the metric names a collector would publish, as `where: message`."""
    problems: list[str] = []
    if collector.spec.target_type == "pgbouncer" and not collector.name.startswith("pgbouncer_"):
        problems.append("target_type: pgbouncer collectors are named pgbouncer_<something>")
    owners: dict[str, str] = {}
    for query in collector.spec.queries:
        problems.extend(_label_problems(collector, query))
        for column, spec in query.metrics.items():
            where = f"queries.{query.name}.metrics.{column}"
            if spec.usage is Usage.LABEL:
                continue
            if spec.usage is Usage.IGNORE:
                continue
            name = collector.metric_name(column, spec)
            if not _METRIC_NAME.match(name):
                problems.append(f"{where}: {name!r} is not a valid metric name")
            if spec.usage is Usage.GAUGE and name.endswith("_total"):
                problems.append(f"{where}: `_total` is reserved for counters")
            if name.removesuffix("_total").endswith(("_count", "_sum", "_bucket")):
                # Histogram and summary suffixes confuse Prometheus' parsers and linters.
                problems.append(f"{where}: {name!r} ends in a suffix Prometheus reserves")
            if spec.unit and spec.unit not in name.removesuffix("_total").split("_"):
                problems.append(f"{where}: the name {name!r} should carry its unit {spec.unit!r}")
            family = name.removesuffix("_total")  # a gauge x and a counter x_total collide
            if family in owners:
                problems.append(f"{where}: {name!r} is already published by {owners[family]}")
            owners[family] = f"queries.{query.name}.metrics.{column}"
    return problems


def _label_problems(collector: Collector, query: Query) -> list[str]:
    """Label names Prometheus would refuse, and mappings whose rows would be identical series."""
    problems = []
    published: dict[str, str] = {}  # label name -> the column publishing it
    aliased: dict[str, str] = {}  # another version's column name -> the column it stands for
    for column, spec in query.metrics.items():
        where = f"queries.{query.name}.metrics.{column}"
        for alias in spec.aliases:
            if alias in aliased:
                problems.append(
                    f"{where}.aliases: {alias!r} also stands for metrics.{aliased[alias]}"
                )
            aliased.setdefault(alias, column)
        if spec.usage is not Usage.LABEL:
            continue
        label = spec.name or column
        if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", label):
            problems.append(f"{where}: not a valid label name")
        elif label.startswith("__"):
            problems.append(f"{where}: label names beginning with __ are reserved by Prometheus")
        elif label == "datname" and collector.spec.scope == "database":
            problems.append(
                f"{where}: label name 'datname' is the exporter's own in a collector with "
                "scope: database (it names the database visited)"
            )
        if label in published:
            problems.append(
                f"{where}: publishes the label {label!r} as metrics.{published[label]} does: "
                "rows differing only in these columns would be identical series"
            )
        published.setdefault(label, column)
    return problems


def family_names(collector: Collector) -> set[str]:
    """The metric family names a collector publishes (counters without `_total`)."""
    return {
        collector.metric_name(column, spec).removesuffix("_total")
        for query in collector.spec.queries
        for column, spec in query.metrics.items()
        if spec.usage in (Usage.GAUGE, Usage.COUNTER)
    }


_NAMED_PARAM = re.compile(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s")


def sql_problems(collector: Collector) -> list[str]:
    """Problems as `queries.NAME.sql: message`."""
    params = collector.spec.params
    problems = []
    for query in collector.spec.queries:
        for index, branch in enumerate(query.alternatives):
            where = f"queries.{query.name}." + (
                f"branches.{index}.sql" if query.branches else "sql"
            )
            if not branch.sql.strip():
                problems.append(f"{where}: empty")
                continue
            named = set(_NAMED_PARAM.findall(branch.sql))
            missing = sorted(named - set(params))
            if missing:
                problems.append(f"{where}: uses %({missing[0]})s, which is not in params")
            # With params the driver reads every %: a literal one must be written %%.
            if params and "%" in _NAMED_PARAM.sub("", branch.sql).replace("%%", ""):
                problems.append(f"{where}: with params, write a literal % as %%")
    return problems


def name_clashes(collectors: list[Collector]) -> list[str]:
    """Metric names one collector would publish over another's, or over the exporter's own."""
    problems = []
    owner: dict[str, str] = {}
    for collector in collectors:
        for family in sorted(family_names(collector)):
            if family == "pg_up" or family.startswith("pg_exporter_"):
                problems.append(f"collectors.{collector.name}: {family!r} is the exporter's own")
            elif family in owner:
                problems.append(
                    f"collectors.{collector.name}: {family!r} is already published by "
                    f"collector {owner[family]!r}"
                )
            owner.setdefault(family, collector.name)
    return problems
