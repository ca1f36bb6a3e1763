"""Benchmark: what each collector costs the monitored database, measured alone.

The same databases as bench/gobench.py (S = 100, M = 2,000, L = 10,000 tables, each with two
secondary indexes and 100 rows, ANALYZEd, and ~5,000 statements in pg_stat_statements) on
PostgreSQL 15. Each collector with its default settings, on its own, runs RUNS times as a
member of pg_monitor; the database time of a run is the growth of that role's
total_exec_time in pg_stat_statements (what the server spent executing its statements), and
the exporter's own measurement of the same run (statements sent to last row received, what
the database time budget uses) is given beside it. Per minute is per run times 60 / interval.

    .venv/bin/python -m bench.collector_cost            # S, M, L; Markdown on stdout (~5 min)
    .venv/bin/python -m bench.collector_cost --write    # ... and update BENCHMARKS.md
    .venv/bin/python -m bench.collector_cost --quick    # CI smoke test: S, one run each
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.common import BENCHMARKS_MD, machine, progress, write_marked_section
from bench.gobench import DEFAULT_BINDIR, PG_SETTINGS, SIZES, STATEMENTS, build, drop
from exporter.catalogue import Collector, builtin_specs
from exporter.collection import CollectorJob, ProbeJob
from exporter.collection.budget import Budget
from exporter.config import DEFAULT_DATABASE_TIME_BUDGET, Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import State
from exporter.targets import TargetRegistry

FIXED_UP_TO = 15.0  # the default up_interval: collectors this frequent are never stretched
START_MARKER = "<!-- collector-cost:start -->"
END_MARKER = "<!-- collector-cost:end -->"
ROLE = "bench_cost"
RUNS = 3
INTRO = """
## What each collector costs the database (`bench/collector_cost.py`)

Each collector alone, so the cost of each check is visible when choosing what to enable and
what database time budget to give (README, "The database time budget"). Reproduce:
`.venv/bin/python -m bench.collector_cost --write` (Debian's postgresql-15, as gobench).
"""


@dataclass(frozen=True)
class Cost:
    server_ms: float  # per run, median: pg_stat_statements' total_exec_time
    measured_ms: float  # per run, median: the exporter's own measurement
    interval: float
    # Queries of a slower cadence of their own (the size sums, every 10 minutes), which the
    # back-to-back runs skip after the first: (seconds, interval) as the exporter measured.
    slower: tuple[tuple[float, float], ...] = ()

    def priced(self, interval: float) -> float:
        """Seconds a run costs, as the budget counts it, at `interval`: the slower queries at
        their share of every run (collection.run.QueryMemory.share)."""
        shares = sum(cost * min(1.0, interval / every) for cost, every in self.slower)
        return self.measured_ms / 1000 + shares


def budget_intervals(
    costs: dict[str, Cost], budget: float = DEFAULT_DATABASE_TIME_BUDGET
) -> dict[str, float]:
    """The intervals the default database time budget settles at with these costs (what the
    exporter converges to once every collector has run warm; a run's price depends on its
    interval through the slower queries, so the solution is iterated)."""
    solver = Budget(budget, fixed_up_to=FIXED_UP_TO)
    for name, cost in costs.items():
        solver.add(name, cost.interval)
    intervals = {name: cost.interval for name, cost in costs.items()}
    for _ in range(20):
        for name, cost in costs.items():
            solver.record(name, cost.priced(intervals[name]))
        intervals = {name: solver.interval(name) for name in costs}
    return intervals


def role_exec_ms(server: LocalPostgres, database: str) -> float:
    """The role's statement time so far (pg_stat_statements is created in the size's database)."""
    with psycopg.connect(server.dsn(database), autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = %s",
            (ROLE,),
        ).fetchone()
    assert row is not None
    return float(row[0])


def config_for(server: LocalPostgres, database: str) -> Config:
    return parse_config(
        {
            "targets": [
                {
                    "name": "bench",
                    "dsn": server.dsn(database, user=ROLE),
                    "databases": {"include": [database]},
                    "database_time_budget": "off",
                }
            ]
        }
    )


def measure(
    server: LocalPostgres, database: str, config: Config, collector: Collector, runs: int
) -> Cost:
    store = Store(self_metrics=self_metrics)
    registry = TargetRegistry()
    try:
        target = registry.add(config.targets[0])
        ProbeJob(target, store)()
        costs: list[float] = []

        def record(_: CollectorJob, seconds: float) -> float:
            costs.append(seconds)
            return collector.spec.interval

        job = CollectorJob(target, collector, store, max_age_intervals=10, on_cost=record)
        server_ms: list[float] = []
        for _ in range(runs):
            before = role_exec_ms(server, database)
            job()
            server_ms.append(role_exec_ms(server, database) - before)
            if job.status.state not in (State.OK, State.UNAVAILABLE):
                raise RuntimeError(f"{collector.name}: {job.status.message}")
        every = {q.name: q.interval for q in collector.spec.queries if q.interval}
        slower = tuple(
            (seconds, every[query])
            for memory in job.memory.values()
            for query, seconds in memory.costs.items()
        )
        # Later runs skip the slower queries: their median is the rest of the collector.
        rest = costs[1:] if slower and len(costs) > 1 else costs
        return Cost(
            statistics.median(server_ms),
            1000 * statistics.median(rest),
            collector.spec.interval,
            slower,
        )
    finally:
        registry.close()


def bench_size(server: LocalPostgres, size: str, runs: int) -> dict[str, Cost]:
    progress(f"{size}: building {SIZES[size]:,} tables")
    database = build(server, size, STATEMENTS)
    try:
        config = config_for(server, database.name)
        collectors = [
            c
            for c in config.catalogue
            if c.spec.target_type == "postgres" and (c.spec.enabled or c.name == "statement_text")
        ]
        found = {}
        for collector in collectors:
            found[collector.name] = measure(server, database.name, config, collector, runs)
            progress(f"{size} {collector.name}: {found[collector.name].server_ms:.1f} ms/run")
        return found
    finally:
        drop(server, database.name)


def _interval(seconds: float | None, configured: float) -> str:
    """The interval under the budget: "=" where it is the configured one, "off" where the
    collector is off by default."""
    if seconds is None:
        return "off"
    if abs(seconds - configured) < 0.5:
        return "="
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}" if value < 1 else f"{value:.1f}"


def markdown(results: dict[str, dict[str, Cost]], command: str, seconds: float) -> str:
    sizes = list(results)
    names = sorted(
        next(iter(results.values())),
        key=lambda n: -max(c[n].server_ms * 60 / c[n].interval for c in results.values()),
    )
    specs = builtin_specs()
    stretched = {
        size: budget_intervals({n: c for n, c in found.items() if specs[n].enabled})
        for size, found in results.items()
    }
    header = "| collector | interval |" + "".join(
        f" {s} ms/run | {s} ms/min | {s} budget |" for s in sizes
    )
    lines = [
        f"Command: `{command}` (whole run {seconds / 60:.1f} min).",
        "",
        *machine(),
        "",
        "Database time of one run (median of the runs, pg_stat_statements' total_exec_time of "
        "the collector's role) and per minute at the collector's default interval; "
        "in brackets, the exporter's own measurement of the run, which its database time "
        f"budget uses. Sizes: {', '.join(f'{s} = {SIZES[s]:,} tables' for s in sizes)}. "
        "**budget**: the interval that the default database time budget "
        f"({DEFAULT_DATABASE_TIME_BUDGET * 60_000:.0f} ms a minute) settles at with these "
        "costs (= where it keeps the collector's own), the 10-minute size sums of `tables` "
        "and `indexes` included at their share: the exporter's own solver, fed the "
        "exporter's own measurements.",
        "",
        header,
        "|---|---:|" + "---:|---:|---:|" * len(sizes),
    ]
    for name in names:
        interval = results[sizes[0]][name].interval
        off = "" if specs[name].enabled else " (off by default)"
        cells = "".join(
            f" {_ms(c.server_ms)} ({_ms(c.measured_ms)}) | {_ms(c.server_ms * 60 / interval)} |"
            f" {_interval(stretched[s].get(name), interval)} |"
            for s, c in ((s, results[s][name]) for s in sizes)
        )
        lines.append(f"| `{name}`{off} | {interval:g} s |{cells}")
    per_minute = [
        sum(c.server_ms * 60 / c.interval for n, c in results[s].items() if specs[n].enabled)
        for s in sizes
    ]
    lines.append(
        "| **on by default, together** | |" + "".join(f" | {_ms(m)} | |" for m in per_minute)
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--quick", action="store_true", help="CI smoke test: S, one run each")
    parser.add_argument("--bindir", type=Path, default=DEFAULT_BINDIR)
    parser.add_argument("--write", action="store_true", help=f"update {BENCHMARKS_MD.name}")
    args = parser.parse_args(argv)
    sizes = ["S"] if args.quick else [s.strip().upper() for s in args.sizes.split(",")]
    runs = 1 if args.quick else RUNS
    started = time.perf_counter()
    server = LocalPostgres(bindir=args.bindir, settings=PG_SETTINGS)
    results: dict[str, dict[str, Cost]] = {}
    try:
        server.start()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
        for size in sizes:
            results[size] = bench_size(server, size, runs)
    except (psycopg.Error, OSError, RuntimeError) as exc:
        print(f"collector_cost failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.cleanup()
    command = ".venv/bin/python -m bench.collector_cost" + (" --quick" if args.quick else "")
    section = markdown(results, command, time.perf_counter() - started)
    print(section, end="")
    if args.write:
        write_marked_section(section, start=START_MARKER, end=END_MARKER, intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
