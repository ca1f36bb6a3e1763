"""Benchmark: how far one exporter process goes, with many clusters or many databases.

One process monitors 1, 10, 50 and 100 small PostgreSQL clusters (one target each: the first
registered by its first `/probe`, the others configured), and
one server with 10, 100, 500 and 1,000 databases, on the default collectors and intervals. The
exporter runs as users run it (`python -m exporter --config ...`). For each setup:

- server-level metrics of every target (its `database` and `connections` collectors have run),
  every collector of an interval up to a minute, and every collector, of every target run
  once, in seconds after the process started;
- then a steady window (60 s): new server sessions per minute (pg_stat_database.sessions on
  every cluster, less the benchmark's own) and the steady rate the schedule makes of them
  (steady_new_sessions), the exporter's CPU per minute, database time per minute per target
  (pg_exporter_collector_database_seconds_total), `/metrics` and the probed cluster's
  `/probe` p50 with gzip (one scrape of each a second), and at its end VmRSS, VmHWM, threads
  and the sessions held;
- the 100 clusters once more with `max_connections_total: 50`: what targets beyond the
  process's cap of sessions cost (each logs in per run);
- with 50 clusters, one is frozen (SIGSTOP, as tests/support/freeze.py does): how long until its
  `pg_up` is 0, and how old the other targets' 15 s collectors' data got meanwhile.

    PYTHONPATH=tests .venv/bin/python -m bench.fleet_bench           # ~25 min, Markdown on stdout
    PYTHONPATH=tests .venv/bin/python -m bench.fleet_bench --write   # ... and update BENCHMARKS.md
    PYTHONPATH=tests .venv/bin/python -m bench.fleet_bench --quick   # seconds (CI smoke test)
"""

import argparse
import gzip
import http.client
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from bench.common import machine, progress, write_marked_section
from bench.load_bench import ExporterProcess, postgres_collectors, wait_until
from exporter.catalogue import builtin_specs
from exporter.demo.embedded import LocalPostgres
from support.freeze import frozen

START_MARKER = "<!-- fleet-bench:start -->"
END_MARKER = "<!-- fleet-bench:end -->"
# Small servers: a hundred of them share two cores.
SMALL = {
    "shared_buffers": "16MB",
    "max_connections": "20",
    "max_wal_senders": "0",
    "fsync": "off",
    "synchronous_commit": "off",
}
FAST = ("database", "connections")  # the 15 s server-level collectors
APPLICATION = "pg-health-exporter"
UP_INTERVAL = 15.0  # the default, which config() keeps
# Collectors of at most this interval: their goal is a first run within two intervals (2 min).
PROMPT_SECONDS = 60.0


@dataclass(frozen=True)
class Plan:
    clusters: tuple[int, ...]
    databases: tuple[int, ...]
    window: float  # seconds of steady state measured
    freeze_at: int  # clusters: freeze one at this size (0: never)
    freeze_seconds: float
    first_timeout: float
    # The largest fleet again under a process-wide cap of this many sessions, below its size.
    capped: int


FULL = Plan((1, 10, 50, 100), (10, 100, 500, 1000), 60.0, 50, 30.0, 600.0, 50)
QUICK = Plan((1, 3), (5,), 5.0, 3, 10.0, 180.0, 0)


@dataclass
class Result:
    setup: str
    targets: int
    databases: int
    server_level_s: float
    prompt_once_s: float  # every collector of an interval up to a minute run once
    all_once_s: float
    series: int
    rss_mib: float
    hwm_mib: float
    threads: int
    sessions_held: int
    new_sessions_per_min: float
    new_sessions_steady: float
    cpu_s_per_min: float
    db_ms_per_min_per_target: float
    scrape_p50_ms: float
    probe_p50_ms: float | None  # one target's /probe, when one was probed


# -- the exposition, read by line (bodies of 300,000 series) -------------------------------------


def _labelled(body: str, metric: str) -> Iterator[tuple[dict[str, str], float]]:
    prefix = metric + "{"
    for line in body.splitlines():
        if line.startswith(prefix):
            labels, _, value = line[len(prefix) :].rpartition("} ")
            yield dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)), float(value)


def collectors_run(body: str) -> dict[str, set[str]]:
    """target -> the collectors that have run (their state is published after a first run)."""
    found: dict[str, set[str]] = {}
    for labels, _ in _labelled(body, "pg_exporter_collector_up"):
        found.setdefault(labels["target"], set()).add(labels["collector"])
    return found


def steady_new_sessions(body: str, targets: int, visited: int, up_interval: float) -> float:
    """New server sessions a minute in steady state, all targets together, from the schedule:
    a probe's login every `up_interval`, and a login per database `visited` (the target's
    others) per round of its per-database collectors, which comes at the shortest of their
    effective intervals (what the database time budget and the visits' login rate made of
    them; collection.rounds).

    A 60 s window cannot tell this: the budget and the login rate stretch the per-database
    collectors to many minutes, so a window holds a round of theirs, one login per database,
    or none."""
    per_database = {
        name
        for name, spec in builtin_specs().items()
        if spec.enabled and spec.scope == "database" and spec.target_type == "postgres"
    }
    rounds: dict[str, float] = {}  # by target: its round's interval
    for labels, interval in _labelled(body, "pg_exporter_collector_interval_seconds"):
        if labels["collector"] in per_database and interval > 0:
            target = labels["target"]
            rounds[target] = min(interval, rounds.get(target, interval))
    return targets * 60 / up_interval + sum(visited * 60 / every for every in rounds.values())


def series(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def database_seconds(body: str) -> float:
    return sum(v for _, v in _labelled(body, "pg_exporter_collector_database_seconds_total"))


# -- the servers ----------------------------------------------------------------------------------


def sessions(servers: Sequence[LocalPostgres]) -> int:
    """Server sessions ever established, summed over the clusters (PostgreSQL 14+)."""
    total = 0
    for server in servers:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database").fetchone()
            assert row is not None
            total += int(row[0])
    return total


def sessions_held(servers: Sequence[LocalPostgres]) -> int:
    held = 0
    for server in servers:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (APPLICATION,),
            ).fetchone()
            assert row is not None
            held += int(row[0])
    return held


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_gzip(port: int, path: str = "/metrics") -> tuple[float, str]:
    """Seconds for one GET of `path` with gzip on a new connection, and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        raw = conn.getresponse().read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return elapsed, gzip.decompress(raw).decode()


# -- one setup ------------------------------------------------------------------------------------


def config(targets: dict[str, str], **settings: Any) -> dict[str, Any]:
    return {"targets": [{"name": name, "dsn": dsn} for name, dsn in targets.items()], **settings}


# /probe for the benchmark's clusters (all on this machine), logging in as the bootstrap role.
PROBING = {"probe": {"allow": ["127.0.0.0/8"]}, "auth_modules": {"default": {"user": "postgres"}}}


def measure(
    setup: str,
    servers: Sequence[LocalPostgres],
    targets: dict[str, str],
    *,
    databases: int,
    plan: Plan,
    directory: Path,
    during: Callable[[ExporterProcess], None] | None = None,
    settings: dict[str, Any] | None = None,
    visited: int = 0,
    probed: str | None = None,
) -> Result:
    """One setup: `targets` configured, and `probed` (HOST:PORT), if any, registered by its
    first /probe as Prometheus' service discovery would."""
    wanted = postgres_collectors()
    specs = builtin_specs()
    prompt = {name for name in wanted if specs[name].interval <= PROMPT_SECONDS}
    started = time.monotonic()
    if probed is not None:
        settings = {**PROBING, **(settings or {})}
    exporter = ExporterProcess(config(targets, **(settings or {})), directory)
    marks: dict[str, float] = {}
    names = [*targets, *([probed] if probed is not None else [])]
    probe_path = f"/probe?target={probed}"
    try:
        if probed is not None:  # registered by its first probe, answered at once (pending)
            wait_until(
                lambda: exporter.get(probe_path) is not None, timeout=60, what="the first probe"
            )

        def first_runs() -> bool:
            body = exporter.get()
            if body is None:
                return False
            run = collectors_run(body)
            everywhere = [run.get(t, set()) for t in names]
            if "server" not in marks and all(set(FAST) <= r for r in everywhere):
                marks["server"] = time.monotonic() - started
            if "prompt" not in marks and all(prompt <= r for r in everywhere):
                marks["prompt"] = time.monotonic() - started
            return all(wanted <= r for r in everywhere)

        wait_until(first_runs, timeout=plan.first_timeout, what=f"{setup}: every first run")
        marks["all"] = time.monotonic() - started
        progress(f"{setup}: first runs in {marks['all']:.1f} s; steady window")
        pid = exporter.process.pid
        sessions_before, cpu_before = sessions(servers), cpu_seconds(pid)
        _, body = scrape_gzip(exporter.port)
        db_before, window_start = database_seconds(body), time.monotonic()
        latencies, probes = [], []
        tick = threading.Event()
        while time.monotonic() - window_start < plan.window:
            elapsed, body = scrape_gzip(exporter.port)
            latencies.append(elapsed)
            if probed is not None:
                probes.append(scrape_gzip(exporter.port, probe_path)[0])
            tick.wait(max(0.0, 1.0 - elapsed - sum(probes[-1:])))
        minutes = (time.monotonic() - window_start) / 60
        own = len(servers) * 2  # the two readings of sessions() are sessions too
        new_sessions = (sessions(servers) - sessions_before - own) / minutes
        cpu = (cpu_seconds(pid) - cpu_before) / minutes
        db_ms = (database_seconds(body) - db_before) * 1000 / minutes / len(names)
        status = exporter.status()
        held = sessions_held(servers)
        if during is not None:
            during(exporter)
    finally:
        exporter.stop()
    return Result(
        setup=setup,
        targets=len(names),
        databases=databases,
        server_level_s=marks.get("server", marks["all"]),
        prompt_once_s=marks.get("prompt", marks["all"]),
        all_once_s=marks["all"],
        series=series(body),
        rss_mib=status["VmRSS"] / 1024,
        hwm_mib=status["VmHWM"] / 1024,
        threads=status["Threads"],
        sessions_held=held,
        new_sessions_per_min=max(0.0, new_sessions),
        new_sessions_steady=steady_new_sessions(body, len(names), visited, UP_INTERVAL),
        cpu_s_per_min=cpu,
        db_ms_per_min_per_target=db_ms,
        scrape_p50_ms=statistics.median(latencies) * 1000,
        probe_p50_ms=statistics.median(probes) * 1000 if probes else None,
    )


@dataclass
class FreezeResult:
    clusters: int
    down_after_s: float | None
    others_max_age_s: float
    seconds: float


def freeze_one(
    server: LocalPostgres, name: str, seconds: float, into: list[FreezeResult], clusters: int
) -> Callable[[ExporterProcess], None]:
    """During a setup's run: freeze `server` for `seconds`; when pg_up of `name` turned 0, and
    the oldest the other targets' `database` collector data got meanwhile."""

    def run(exporter: ExporterProcess) -> None:
        down_after: float | None = None
        oldest = 0.0
        pause = threading.Event()
        with frozen(server):
            started = time.monotonic()
            while (now := time.monotonic()) - started < seconds:
                body = exporter.get() or ""
                for labels, value in _labelled(body, "pg_up"):
                    if labels["target"] == name and value == 0 and down_after is None:
                        down_after = now - started
                for labels, last in _labelled(
                    body, "pg_exporter_collector_last_success_timestamp_seconds"
                ):
                    if labels["target"] != name and labels["collector"] == "database":
                        oldest = max(oldest, time.time() - last)
                pause.wait(0.5)
        into.append(FreezeResult(clusters, down_after, oldest, seconds))

    return run


# -- the report -----------------------------------------------------------------------------------


def markdown(results: list[Result], freezes: list[FreezeResult], command: str) -> str:
    lines = [
        f"Recorded by `{command}` on:",
        "",
        *machine(),
        "",
        "| setup | server-level metrics | collectors of up to 60 s once | every collector once | "
        "series | VmRSS (peak) | threads | sessions held | new sessions / min (window; steady) | "
        "exporter CPU / min | DB ms / min / target | /metrics p50 gzip | /probe p50 gzip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.server_level_s:.1f} s | {r.prompt_once_s:.1f} s | "
            f"{r.all_once_s:.1f} s | {r.series:,} | "
            f"{r.rss_mib:.0f} MiB ({r.hwm_mib:.0f}) | {r.threads} | {r.sessions_held} | "
            f"{r.new_sessions_per_min:.0f}; {r.new_sessions_steady:.0f} | "
            f"{r.cpu_s_per_min:.2f} s | "
            f"{r.db_ms_per_min_per_target:.0f} | {r.scrape_p50_ms:.1f} ms | "
            f"{'-' if r.probe_p50_ms is None else f'{r.probe_p50_ms:.1f} ms'} |"
        )
    for f in freezes:
        down = "not within the freeze" if f.down_after_s is None else f"{f.down_after_s:.1f} s"
        lines += [
            "",
            f"One of {f.clusters} clusters frozen for {f.seconds:g} s: its `pg_up` 0 after "
            f"{down}; the other targets' `database` collector (15 s) data at most "
            f"{f.others_max_age_s:.1f} s old meanwhile.",
        ]
    return "\n".join(lines) + "\n"


INTRO = """## A fleet in one process (`bench/fleet_bench.py`)

One exporter process, default collectors and intervals, monitoring many small clusters (one
target each: the first through `/probe`, registered by its first probe as service discovery
would, the others configured) or one server with many databases. Times are from the
process's start; the steady window is 60 s after every collector's first run, with a scrape of
`/metrics` and one of the probed cluster's `/probe` every second.

"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="seconds, small fleets (CI)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument(
        "--only", choices=("clusters", "databases"), help="one of the two setups (no --write)"
    )
    args = parser.parse_args(argv)
    if (args.quick or args.only) and args.write:
        parser.error("--write records the full run; drop --quick and --only")
    plan = QUICK if args.quick else FULL
    if args.only == "clusters":
        plan = replace(plan, databases=())
    elif args.only == "databases":
        plan = replace(plan, clusters=(1,), freeze_at=0)
    results: list[Result] = []
    freezes: list[FreezeResult] = []
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-")))
        os.chmod(directory, 0o755)
        servers: list[LocalPostgres] = []
        for size in plan.clusters:
            while len(servers) < size:
                server = LocalPostgres(settings=SMALL, preload_libraries=())
                stack.callback(server.cleanup)
                server.start()
                servers.append(server)
            progress(f"{size} clusters started")
            fleet = servers[:size]
            # The first cluster through /probe, the others configured.
            targets = {f"c{i:03d}": s.dsn() for i, s in enumerate(fleet) if i}
            during = None
            if size == plan.freeze_at:
                during = freeze_one(
                    fleet[-1], f"c{size - 1:03d}", plan.freeze_seconds, freezes, size
                )
            results.append(
                measure(
                    f"{size} cluster{'' if size == 1 else 's'}",
                    fleet,
                    targets,
                    databases=size,
                    plan=plan,
                    directory=directory,
                    during=during,
                    probed=f"127.0.0.1:{fleet[0].port}",
                )
            )
        if plan.capped and plan.clusters:
            size = plan.clusters[-1]
            results.append(
                measure(
                    f"{size} clusters, max_connections_total {plan.capped}",
                    servers[:size],
                    {f"c{i:03d}": s.dsn() for i, s in enumerate(servers[:size])},
                    databases=size,
                    plan=plan,
                    directory=directory,
                    settings={"max_connections_total": plan.capped},
                )
            )
        for server in servers[1:]:
            server.cleanup()  # the databases setup needs one server only
        server = servers[0]
        made = 0
        for count in plan.databases:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                while made < count:
                    conn.execute(f"CREATE DATABASE fleet_{made:04d}")
                    made += 1
            progress(f"{count} databases made")
            results.append(
                measure(
                    f"1 server, {count} databases",
                    [server],
                    {"c000": server.dsn()},
                    databases=count,
                    plan=plan,
                    directory=directory,
                    visited=count,  # the own database (postgres) is the pool's
                )
            )
    command = "PYTHONPATH=tests .venv/bin/python -m bench.fleet_bench" + (
        " --quick" if args.quick else ""
    )
    section = markdown(results, freezes, command)
    print(section, end="")
    if args.write:
        write_marked_section(section, start=START_MARKER, end=END_MARKER, intro=INTRO)
        progress("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
