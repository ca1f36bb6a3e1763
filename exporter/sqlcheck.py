"""What can be told wrong about a collector's SQL without a server to run it on.

A mistake caught here exits with code 2 at start-up instead of failing every interval.
"""

import re

from exporter.catalogue import Collector

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
