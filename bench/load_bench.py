"""Benchmark: 50 concurrent scrapers against the running exporter, then a soak.

A throwaway PostgreSQL (pg_stat_statements loaded) gets 200 tables, a statement workload and a
monitoring role that is only a member of pg_monitor. The exporter runs as users run it, a
child process (`python -m exporter --config ...`) on 127.0.0.1, monitoring that server.

Load: with the default collector intervals and after every collector's first run, scrapers
(threads, spread over client processes so one client's GIL does not cap the load) GET
/metrics with `Accept-Encoding: gzip`, each on a new connection and again as soon as answered,
for 60 s. Reported: requests, errors, throughput and latency percentiles; and what the
database saw from the exporter's role (pg_stat_statements calls) and in all (pg_stat_database
transactions) during the load, next to an idle window of the same length just before it.
The scheduled jobs run in both windows, so they differ by which jobs fell in each; the same
load is then repeated against an exporter with nothing scheduled (every interval 1 h, after
its first round), where whatever the database sees is what the scrapes cost it.

Soak: a second exporter with every collector and the probe at a 1 s interval, scraped by a few
clients once a second, for 10 minutes. Its VmRSS and thread count are sampled every 10 s.

    .venv/bin/python -m bench.load_bench            # 60 s load + 10 min soak, Markdown on stdout
    .venv/bin/python -m bench.load_bench --write    # ... and update BENCHMARKS.md
    .venv/bin/python -m bench.load_bench --quick    # a few seconds of each (CI smoke test)
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.common import (
    REPO,
    SERVER_SETTINGS,
    create_tables,
    machine,
    process_memory_kib,
    progress,
    run_statements,
    table_name,
    write_marked_section,
)
from exporter.catalogue import builtin_specs
from exporter.demo.embedded import LocalPostgres
from exporter.units import parse_duration

START_MARKER = "<!-- load-bench:start -->"
END_MARKER = "<!-- load-bench:end -->"
ROLE = "load_monitor"


@dataclass(frozen=True)
class Plan:
    tables: int
    scrapers: int
    client_processes: int
    load_seconds: float
    soak_seconds: float
    soak_sample_seconds: float
    soak_scrapers: int


FULL = Plan(200, 50, 2, 60.0, 600.0, 10.0, 5)
QUICK = Plan(20, 10, 1, 3.0, 10.0, 2.0, 2)


# -- the database -----------------------------------------------------------------------------


def table_ddl(i: int) -> str:
    name = table_name(i)
    return (
        f"CREATE TABLE {name} (id int PRIMARY KEY, parent_id int, code int, note text,"
        f" created_at timestamptz DEFAULT now());"
        f" INSERT INTO {name} (id, code, note) SELECT g, g % 7, 'n' FROM generate_series(1, 50) g;"
    )


def prepare(server: LocalPostgres, plan: Plan) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for schema in ("sales", "audit", "staging"):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
    create_tables(server.dsn(), plan.tables, table_ddl)
    run_statements(server.dsn(), plan.tables * 2, plan.tables)


@dataclass(frozen=True)
class DatabaseCounters:
    statements: int  # calls by the exporter's role (pg_stat_statements)
    transactions: int  # commits + rollbacks in every database (pg_stat_database)


def database_counters(server: LocalPostgres) -> DatabaseCounters:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        # Statistics of other backends reach pg_stat_database when they report them; make
        # this backend's snapshot fresh, so each reading is as of now.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        calls = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE userid = %s::regrole",
            (ROLE,),
        ).fetchone()
        xacts = conn.execute(
            "SELECT coalesce(sum(xact_commit + xact_rollback), 0) FROM pg_stat_database"
        ).fetchone()
    assert calls is not None and xacts is not None
    return DatabaseCounters(int(calls[0]), int(xacts[0]))


# -- the exporter -----------------------------------------------------------------------------


class ExporterProcess:
    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        path = directory / f"config-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "exporter", "--config", str(path)),
                *("--web.listen-address", f"127.0.0.1:{self.port}"),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def get(self, path: str = "/metrics") -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return str(r.read().decode())
        except OSError:
            if self.process.poll() is not None:
                raise RuntimeError("exporter exited:\n" + "".join(self.log)) from None
            return None

    def status(self) -> dict[str, int]:
        """VmRSS (KiB) and thread count from /proc."""
        found = process_memory_kib(self.process.pid)
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Threads:"):
                    found["Threads"] = int(line.split()[1])
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return
        pause.wait(0.2)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def first_round_done(exporter: ExporterProcess, collectors: set[str]) -> bool:
    body = exporter.get()
    if body is None:
        return False
    seen = {
        line.split('collector="', 1)[1].split('"', 1)[0]
        for line in body.splitlines()
        if line.startswith("pg_exporter_collector_up{")
    }
    return seen >= collectors


def exporter_config(server: LocalPostgres, *, interval: str | None) -> dict[str, Any]:
    """Every collector and the probe at `interval`, or (None) the defaults."""
    collectors: dict[str, Any] = {}
    seconds = parse_duration(interval) if interval else None
    for name, spec in builtin_specs().items():
        if seconds is not None:
            timeout = min(spec.timeout, seconds)
            collectors[name] = {"interval": interval, "timeout": f"{timeout:g}s"}
    return {
        "up_interval": interval or "15s",
        "collectors": collectors,
        "targets": [{"name": "bench", "dsn": server.dsn(user=ROLE)}],
    }


def postgres_collectors() -> set[str]:
    return {n for n, s in builtin_specs().items() if s.enabled and s.target_type == "postgres"}


# -- the scrapers -----------------------------------------------------------------------------


def scrape_once(port: int) -> float:
    """One GET /metrics (gzip) on a new connection; seconds until the body is read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return elapsed


def scraper_child(port: int, threads: int, seconds: float) -> dict[str, Any]:
    """Run in a client process: `threads` scrapers in a closed loop for `seconds`."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        mine: list[float] = []
        while time.monotonic() < deadline:
            try:
                mine.append(scrape_once(port))
            except (OSError, RuntimeError, http.client.HTTPException) as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"latencies": latencies, "errors": errors}


@dataclass
class LoadResult:
    scrapers: int
    seconds: float
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    idle: DatabaseCounters | None  # the same length of time just before, without scrapers
    loaded: DatabaseCounters


def run_load(
    exporter: ExporterProcess, server: LocalPostgres, plan: Plan, *, idle_first: bool
) -> LoadResult:
    idle = None
    if idle_first:
        progress(f"idle window: {plan.load_seconds:g}s")
        before_idle = database_counters(server)
        threading.Event().wait(plan.load_seconds)
    before_load = database_counters(server)
    if idle_first:
        idle = _delta(before_idle, before_load)
    progress(f"load: {plan.scrapers} scrapers for {plan.load_seconds:g}s")
    per_process = [plan.scrapers // plan.client_processes] * plan.client_processes
    per_process[0] += plan.scrapers - sum(per_process)
    children = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.load_bench", "--scraper-child"),
                *(str(exporter.port), str(threads), str(plan.load_seconds)),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for threads in per_process
    ]
    outputs = [
        json.loads(child.communicate(timeout=plan.load_seconds + 120)[0]) for child in children
    ]
    loaded = _delta(before_load, database_counters(server))
    latencies = sorted(x for out in outputs for x in out["latencies"])
    errors: dict[str, int] = {}
    for out in outputs:
        for kind, count in out["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LoadResult(
        scrapers=plan.scrapers,
        seconds=plan.load_seconds,
        requests=len(latencies),
        errors=errors,
        p50_ms=cuts[49] * 1000,
        p90_ms=cuts[89] * 1000,
        p99_ms=cuts[98] * 1000,
        max_ms=latencies[-1] * 1000,
        idle=idle,
        loaded=loaded,
    )


def _delta(before: DatabaseCounters, after: DatabaseCounters) -> DatabaseCounters:
    return DatabaseCounters(
        after.statements - before.statements, after.transactions - before.transactions
    )


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class SoakResult:
    seconds: float
    samples: list[dict[str, float]] = field(default_factory=list)  # t, rss_kib, threads
    scrapes: int = 0
    errors: int = 0


def run_soak(exporter: ExporterProcess, plan: Plan) -> SoakResult:
    progress(f"soak: {plan.soak_seconds:g}s, every collector at 1s")
    result = SoakResult(seconds=plan.soak_seconds)
    stop = threading.Event()
    lock = threading.Lock()

    def scraper() -> None:
        while not stop.wait(1.0):
            try:
                scrape_once(exporter.port)
                ok = True
            except (OSError, RuntimeError, http.client.HTTPException):
                ok = False
            with lock:
                result.scrapes += 1
                result.errors += not ok

    clients = [threading.Thread(target=scraper) for _ in range(plan.soak_scrapers)]
    for client in clients:
        client.start()
    started = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - started
            status = exporter.status()
            result.samples.append(
                {"t": elapsed, "rss_kib": status["VmRSS"], "threads": status["Threads"]}
            )
            if elapsed >= plan.soak_seconds:
                break
            stop.wait(min(plan.soak_sample_seconds, plan.soak_seconds - elapsed))
    finally:
        stop.set()
        for client in clients:
            client.join()
    return result


# -- the report -------------------------------------------------------------------------------


def markdown(
    loads: tuple[LoadResult, LoadResult],
    soak: SoakResult,
    plan: Plan,
    *,
    command: str,
    version_num: int,
) -> str:
    scheduled, quiet = loads
    assert scheduled.idle is not None
    rss = [s["rss_kib"] / 1024 for s in soak.samples]
    threads = [int(s["threads"]) for s in soak.samples]
    half = len(rss) // 2
    first_half, second_half = rss[: max(1, half)], rss[half:]
    lines = [
        f"Recorded with `{command}`:",
        "",
        *machine(),
        f"- PostgreSQL {version_num // 10000}, {plan.tables} tables; the exporter as a child "
        "process",
        "",
        f"**Load**: {scheduled.scrapers} scrapers for {scheduled.seconds:g} s each run "
        f"({plan.client_processes} client processes, a new connection per request, gzip)",
        "",
        "| exporter | requests | errors | per second | p50 | p90 | p99 | max |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {r.requests:,} | {_errors(r)} | {r.requests / r.seconds:,.0f} | "
            f"{r.p50_ms:.1f} ms | {r.p90_ms:.1f} ms | {r.p99_ms:.1f} ms | {r.max_ms:.1f} ms |"
            for label, r in (("default intervals", scheduled), ("nothing scheduled", quiet))
        ),
        "",
        "What the database saw (statements: pg_stat_statements calls by the exporter's role;",
        "transactions: pg_stat_database, every database, including this benchmark's own",
        "readings):",
        "",
        "| window | statements | transactions |",
        "|---|---:|---:|",
        f"| default intervals, idle {scheduled.seconds:g} s | "
        f"{scheduled.idle.statements:,} | {scheduled.idle.transactions:,} |",
        f"| default intervals, the next {scheduled.seconds:g} s: {scheduled.requests:,} "
        f"scrapes | {scheduled.loaded.statements:,} | {scheduled.loaded.transactions:,} |",
        f"| nothing scheduled, {quiet.seconds:g} s: {quiet.requests:,} scrapes | "
        f"{quiet.loaded.statements:,} | {quiet.loaded.transactions:,} |",
        "",
        f"**Soak**: {_duration(soak.seconds)}, every collector and the probe at 1 s, "
        f"{plan.soak_scrapers} scrapers once a second: {soak.scrapes:,} scrapes, "
        f"{soak.errors} errors.",
        "",
        "| | first sample | median, first half | median, second half | last | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| VmRSS | {rss[0]:.1f} MiB | {statistics.median(first_half):.1f} MiB | "
        f"{statistics.median(second_half):.1f} MiB | {rss[-1]:.1f} MiB | {max(rss):.1f} MiB |",
        f"| threads | {threads[0]} | {statistics.median(threads[: max(1, half)]):g} | "
        f"{statistics.median(threads[half:]):g} | {threads[-1]} | {max(threads)} |",
        "",
    ]
    return "\n".join(lines)


def _errors(result: LoadResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


INTRO = """## Concurrent scrapers and soak (`bench/load_bench.py`)

The exporter as users run it (a child process, `python -m exporter`) against a throwaway
PostgreSQL with 200 tables, monitored by a `pg_monitor` role. Load: 50 scrapers in a closed loop
for 60 s, against the exporter with its default intervals (the database's view compared with an
idle window of the same length just before) and against one with nothing scheduled (whatever
the database sees then is what scrapes cost it). Soak: every collector at 1 s for 10 minutes,
memory and threads sampled every 10 s.

"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds of each (CI)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--scraper-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scraper_child:
        port, threads, seconds = args.scraper_child
        print(json.dumps(scraper_child(int(port), int(threads), float(seconds))))
        return 0
    if args.quick and args.write:
        parser.error("--write records the full run; drop --quick")
    plan = QUICK if args.quick else FULL
    with (
        tempfile.TemporaryDirectory(prefix="load-bench-") as tmp,
        LocalPostgres(settings=SERVER_SETTINGS) as server,
    ):
        os.chmod(tmp, 0o755)
        directory = Path(tmp)
        progress(f"preparing {plan.tables} tables")
        prepare(server, plan)

        loads = []
        for interval in (None, "1h"):
            exporter = ExporterProcess(exporter_config(server, interval=interval), directory)
            try:
                wait_until(
                    lambda: first_round_done(exporter, postgres_collectors()),  # noqa: B023
                    timeout=300,
                    what="every collector's first run",
                )
                loads.append(run_load(exporter, server, plan, idle_first=interval is None))
            finally:
                exporter.stop()

        exporter = ExporterProcess(exporter_config(server, interval="1s"), directory)
        try:
            wait_until(
                lambda: first_round_done(exporter, postgres_collectors()),
                timeout=300,
                what="every collector's first run",
            )
            soak = run_soak(exporter, plan)
        finally:
            exporter.stop()
        version = server.version_num()

    command = ".venv/bin/python -m bench.load_bench" + (" --quick" if args.quick else "")
    section = markdown((loads[0], loads[1]), soak, plan, command=command, version_num=version)
    print(section, end="")
    print(json.dumps({"loads": [asdict(r) for r in loads], "soak": asdict(soak)}), file=sys.stderr)
    if args.write:
        write_marked_section(section, start=START_MARKER, end=END_MARKER, intro=INTRO)
        progress("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
