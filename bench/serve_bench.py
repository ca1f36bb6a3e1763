"""Benchmark: /metrics served from the in-memory store, at 10,000 and 100,000 series.

Fills a real `Store` (with the real self-metrics) the way the scheduler's jobs do: metric
families with realistic labels, one part per (target, collector[, database]), rendered with
`exporter.exposition.render.render` and `Store.publish`. Serves it with the real `MetricsServer` on
127.0.0.1 (port 0) and scrapes it from this process over http.client, a new connection per
request, plain and with `Accept-Encoding: gzip`.

Reported per size:
- steady state: latency percentiles while the snapshot (and its gzip) is cached;
- after a change: the first scrape after a `put` (the store rebuilds the body, and the gzip on
  the first gzip request), and the same split in-process (`store.snapshot()`, `gzipped()`);
- the background cost: `render` of every family, once per poll;
- memory: VmRSS/VmHWM after filling and after the scrapes.

Each size runs in its own child process so its memory figures are its own.

    .venv/bin/python -m bench.serve_bench            # 10k and 100k, Markdown on stdout
    .venv/bin/python -m bench.serve_bench --write    # ... and update BENCHMARKS.md
    .venv/bin/python -m bench.serve_bench --quick    # 2k series, a few seconds (CI smoke test)
"""

import argparse
import ctypes
import ctypes.util
import gzip
import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bench.common import BENCHMARKS_MD, REPO, machine, memory_kib, write_marked_section
from exporter.config import parse_config
from exporter.exposition.render import RenderedFamily, merge_families, render
from exporter.exposition.selfmetrics import self_metrics
from exporter.exposition.store import Store
from exporter.status import CollectorStatus, Reachability, State
from exporter.web.health import HealthPage
from exporter.web.html import LandingPage
from exporter.web.server import MetricsServer

START_MARKER = "<!-- serve-bench:start -->"
END_MARKER = "<!-- serve-bench:end -->"
COMMAND = ".venv/bin/python -m bench.serve_bench --write"

# Full run: (series, requests per encoding). Quick run: small enough for a CI smoke test.
FULL = ((10_000, 200), (100_000, 100))
QUICK = ((2_000, 20),)

MAX_AGE = 3600.0  # seconds: no part expires during a run, so only our puts invalidate
PERCENTILES = (50, 90, 99)

T = TypeVar("T")

# -- the workload: what two production-like targets publish -------------------------------

TARGETS = ("pg-main", "pg-reporting")
DATABASES = ("app", "billing", "inventory", "auth")
SCHEMAS = ("public", "sales", "audit", "staging")
USERS = ("app_rw", "app_ro", "etl")
STATES = ("active", "idle", "idle in transaction", "fastpath function call")
WORDS = (
    "orders",
    "order_items",
    "customers",
    "invoices",
    "payments",
    "shipments",
    "products",
    "events",
    "sessions",
    "audit_log",
    "line_items",
    "accounts",
)
DATABASE_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "temp_files",
    "temp_bytes",
    "deadlocks",
    "blk_read_time_seconds",
    "blk_write_time_seconds",
    "session_time_seconds",
    "active_time_seconds",
    "idle_in_transaction_time_seconds",
    "sessions",
    "sessions_abandoned",
    "sessions_fatal",
    "sessions_killed",
)
TABLE_COUNTERS = (
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
    "n_tup_hot_upd",
    "vacuum_count",
    "autovacuum_count",
    "analyze_count",
    "autoanalyze_count",
)
TABLE_GAUGES = (
    "n_live_tup",
    "n_dead_tup",
    "size_bytes",
    "last_autovacuum_timestamp_seconds",
    "last_autoanalyze_timestamp_seconds",
)
INDEX_COUNTERS = ("idx_scan", "idx_tup_read", "idx_tup_fetch")
INDEX_GAUGES = ("size_bytes",)
INDEXES_PER_TABLE = 2
STATEMENT_COUNTERS = (
    "calls",
    "exec_time_seconds",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "temp_blks_written",
)
CONNECTION_GAUGES = ("max", "superuser_reserved", "reserved")

PER_TABLE = len(TABLE_COUNTERS) + len(TABLE_GAUGES)
PER_INDEX = len(INDEX_COUNTERS) + len(INDEX_GAUGES)
PER_TABLE_WITH_INDEXES = PER_TABLE + INDEXES_PER_TABLE * PER_INDEX
PER_STATEMENT = len(STATEMENT_COUNTERS)
# Series per target that do not grow with the schema: pg_stat_database and connections.
FIXED_PER_TARGET = (
    len(DATABASES) * (len(DATABASE_COUNTERS) + 1)
    + len(DATABASES) * len(USERS) * len(STATES)
    + len(CONNECTION_GAUGES)
)


@dataclass(frozen=True)
class Shape:
    """How many objects give (about) the requested number of series."""

    tables_per_database: int
    statements_per_target: int

    @classmethod
    def for_series(cls, series: int) -> "Shape":
        # Tables (with their indexes) take the bulk; statements (a capped top-N in the
        # exporter) fill the remainder, at roughly 1 statement per 4 tables.
        per_target = (series - FIXED_PER_TARGET * len(TARGETS)) / len(TARGETS)
        per_table = PER_TABLE_WITH_INDEXES + PER_STATEMENT / 4
        tables = max(1, int(per_target / len(DATABASES) / per_table))
        rest = per_target - len(DATABASES) * tables * PER_TABLE_WITH_INDEXES
        return cls(tables, max(1, int(rest // PER_STATEMENT)))


def _counter(prefix: str, name: str, help_text: str, labels: list[str]) -> CounterMetricFamily:
    # CounterMetricFamily appends `_total` to the sample names itself.
    return CounterMetricFamily(f"{prefix}_{name}", help_text, labels=labels)


def _gauge(prefix: str, name: str, help_text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{prefix}_{name}", help_text, labels=labels)


def _relname(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]}_{i // len(WORDS):04d}"


def database_part(target: str, rng: random.Random) -> list[Metric]:
    labels = ["target", "datname"]
    counters = [
        _counter("pg_database", c, f"{c} from pg_stat_database.", labels) for c in DATABASE_COUNTERS
    ]
    reset = _gauge("pg_database", "stats_reset_timestamp_seconds", "Stats reset time.", labels)
    for datname in DATABASES:
        for family in counters:
            family.add_metric([target, datname], float(rng.randrange(10**10)))
        reset.add_metric([target, datname], 1.7e9 + rng.random() * 1e7)
    return [*counters, reset]


def connections_part(target: str, rng: random.Random) -> list[Metric]:
    backends = _gauge(
        "pg_connections",
        "backends",
        "Client connections by database, user and state.",
        ["target", "datname", "usename", "state"],
    )
    for datname in DATABASES:
        for user in USERS:
            for state in STATES:
                backends.add_metric([target, datname, user, state], float(rng.randrange(50)))
    limits = [
        _gauge("pg_connections", g, f"The {g} setting.", ["target"]) for g in CONNECTION_GAUGES
    ]
    for family in limits:
        family.add_metric([target], float(rng.randrange(500)))
    return [backends, *limits]


def statements_part(target: str, count: int, rng: random.Random) -> list[Metric]:
    labels = ["target", "datname", "usename", "queryid"]
    counters = [
        _counter("pg_statements", c, f"{c} from pg_stat_statements.", labels)
        for c in STATEMENT_COUNTERS
    ]
    for i in range(count):
        queryid = str(rng.randrange(-(2**63), 2**63))
        values = [target, DATABASES[i % len(DATABASES)], USERS[i % len(USERS)], queryid]
        for family in counters:
            family.add_metric(values, float(rng.randrange(10**9)))
    return [*counters]


def tables_part(target: str, datname: str, tables: int, rng: random.Random) -> list[Metric]:
    labels = ["target", "datname", "schemaname", "relname"]
    counters = [
        _counter("pg_tables", c, f"{c} from pg_stat_user_tables.", labels) for c in TABLE_COUNTERS
    ]
    gauges = [_gauge("pg_tables", g, f"{g} of the table.", labels) for g in TABLE_GAUGES]
    for i in range(tables):
        values = [target, datname, SCHEMAS[i % len(SCHEMAS)], _relname(i)]
        for family in counters:
            family.add_metric(values, float(rng.randrange(10**9)))
        gauges[0].add_metric(values, float(rng.randrange(10**8)))
        gauges[1].add_metric(values, float(rng.randrange(10**6)))
        gauges[2].add_metric(values, float(rng.randrange(8192, 10**11)))
        gauges[3].add_metric(values, 1.7e9 + rng.random() * 1e7)
        gauges[4].add_metric(values, 1.7e9 + rng.random() * 1e7)
    return [*counters, *gauges]


def indexes_part(target: str, datname: str, tables: int, rng: random.Random) -> list[Metric]:
    labels = ["target", "datname", "schemaname", "relname", "indexrelname"]
    counters = [
        _counter("pg_indexes", c, f"{c} from pg_stat_user_indexes.", labels) for c in INDEX_COUNTERS
    ]
    size = _gauge("pg_indexes", "size_bytes", "Size of the index.", labels)
    for i in range(tables):
        relname = _relname(i)
        for indexrelname in (f"{relname}_pkey", f"{relname}_created_at_idx"):
            values = [target, datname, SCHEMAS[i % len(SCHEMAS)], relname, indexrelname]
            for family in counters:
                family.add_metric(values, float(rng.randrange(10**9)))
            size.add_metric(values, float(rng.randrange(8192, 10**10)))
    return [*counters, size]


# (target, collector, database): where a part of the workload comes from.
Origin = tuple[str, str, str]


def workload(series: int) -> Iterator[tuple[Origin, list[Metric]]]:
    """Every part the jobs would put, as (key, families), deterministic for a size."""
    shape = Shape.for_series(series)
    for target in TARGETS:
        rng = random.Random(f"{target}/server")
        yield (target, "database", ""), database_part(target, rng)
        yield (target, "connections", ""), connections_part(target, rng)
        yield (
            (target, "statements", ""),
            statements_part(target, shape.statements_per_target, rng),
        )
        for datname in DATABASES:
            rng = random.Random(f"{target}/{datname}")
            tables = shape.tables_per_database
            yield (target, "tables", datname), tables_part(target, datname, tables, rng)
            yield (target, "indexes", datname), indexes_part(target, datname, tables, rng)


# -- measuring -------------------------------------------------------------------------------


def trimmed_rss_kib() -> int | None:
    """VmRSS after glibc's malloc_trim(0): live memory, without what the allocator keeps free.

    None where the C library has no malloc_trim (not glibc).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        malloc_trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim(0)
    return memory_kib()["VmRSS"]


def scrape(port: int, *, gzipped: bool) -> tuple[float, bytes]:
    """One GET /metrics on a new connection: (seconds until the body is read, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzipped else {})
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    if (response.getheader("Content-Encoding") == "gzip") != gzipped:
        raise RuntimeError("Content-Encoding does not match the request")
    return elapsed, body


def rebuild_seconds(store: Store) -> tuple[float, float]:
    """Time `store.snapshot()` (a rebuild, after a change) and then its `gzipped()`."""
    started = time.perf_counter()
    snapshot = store.snapshot()
    built = time.perf_counter()
    snapshot.gzipped()
    return built - started, time.perf_counter() - built


def on_new_thread(work: Callable[[], T]) -> T:
    """Run `work` on a new thread, as the server runs each request (its allocator arena too)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    return results[0]


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] * 1000 for p in PERCENTILES}


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


def count_series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


@dataclass
class Result:
    requested: int
    series: int  # samples in the body, self-metrics included
    parts: int
    families: int
    requests: int
    rounds: int
    body_bytes: int
    gzip_bytes: int
    render_ms: float
    plain: dict[str, float]
    gzip: dict[str, float]
    first_plain_ms: float  # first scrape after a put, plain: the store rebuilds the body
    first_gzip_after_plain_ms: float  # then the first gzip scrape: compresses it
    first_gzip_ms: float  # first scrape after a put is a gzip one: rebuild and compress
    build_ms: float  # no HTTP, on a new thread: store.snapshot() after a put
    compress_ms: float  # then snapshot.gzipped() on that new snapshot
    memory_start: dict[str, int]
    memory_filled: dict[str, int]
    memory_scraped: dict[str, int]
    memory_trimmed: int | None  # VmRSS after malloc_trim(0), store and server still alive


def measure(series: int, requests: int, rounds: int) -> Result:
    """Fill a store with about `series` series, serve it and scrape it."""
    memory_start = memory_kib()
    store = Store(self_metrics=self_metrics)
    render_seconds = 0.0
    families = 0
    # One collector run publishes the families of every database it visited, at once.
    runs: dict[tuple[str, str], list[tuple[RenderedFamily, ...]]] = {}
    for (target, collector, _), metrics in workload(series):
        started = time.perf_counter()
        rendered = render(metrics)
        render_seconds += time.perf_counter() - started
        families += len(rendered)
        runs.setdefault((target, collector), []).append(rendered)
    for target in TARGETS:
        store.publish_target(target, Reachability(up=True, server_version="17.2", seq=1))
    for (target, collector), parts in runs.items():
        merged = merge_families(parts)
        status = CollectorStatus(
            state=State.OK,
            last_success=time.time(),
            last_duration=0.05,
            series=sum(f.series for f in merged),
        )
        store.publish(target, collector, merged, status, max_age=MAX_AGE)
    memory_filled = memory_kib()

    # A fast collector's refresh: what invalidates the cached snapshot between scrapes.
    refreshed = (TARGETS[0], "connections")
    refreshed_status = CollectorStatus(state=State.OK, last_success=time.time(), series=1)

    def change() -> None:
        store.publish(
            *refreshed, merge_families(runs[refreshed]), refreshed_status, max_age=MAX_AGE
        )

    landing = LandingPage(target_dsns={t: f"host=db.example port=5432 dbname={t}" for t in TARGETS})
    health = HealthPage(
        parse_config(
            {"targets": [{"name": t, "dsn": f"host=db.example dbname={t}"} for t in TARGETS]}
        )
    )
    server = MetricsServer(store, landing, health, "127.0.0.1:0")
    server.start()
    try:
        _, body = scrape(server.port, gzipped=False)
        _, compressed = scrape(server.port, gzipped=True)
        if gzip.decompress(compressed) != body:
            raise RuntimeError("the gzip body does not decompress to the plain body")

        first_plain, first_gzip_after_plain, first_gzip, build, compress = [], [], [], [], []
        for _ in range(rounds):
            change()
            first_plain.append(scrape(server.port, gzipped=False)[0])
            first_gzip_after_plain.append(scrape(server.port, gzipped=True)[0])
        for _ in range(rounds):
            change()
            first_gzip.append(scrape(server.port, gzipped=True)[0])
        for _ in range(rounds):
            change()
            seconds = on_new_thread(lambda: rebuild_seconds(store))
            build.append(seconds[0])
            compress.append(seconds[1])

        # Steady state: the snapshot and its gzip stay cached from here on.
        plain = [scrape(server.port, gzipped=False)[0] for _ in range(requests)]
        gzipped = [scrape(server.port, gzipped=True)[0] for _ in range(requests)]
        memory_scraped = memory_kib()
        memory_trimmed = trimmed_rss_kib()
    finally:
        server.shutdown()
    return Result(
        requested=series,
        series=count_series(body),
        parts=len(parts),
        families=families,
        requests=requests,
        rounds=rounds,
        body_bytes=len(body),
        gzip_bytes=len(compressed),
        render_ms=render_seconds * 1000,
        plain=percentiles_ms(plain),
        gzip=percentiles_ms(gzipped),
        first_plain_ms=median_ms(first_plain),
        first_gzip_after_plain_ms=median_ms(first_gzip_after_plain),
        first_gzip_ms=median_ms(first_gzip),
        build_ms=median_ms(build),
        compress_ms=median_ms(compress),
        memory_start=memory_start,
        memory_filled=memory_filled,
        memory_scraped=memory_scraped,
        memory_trimmed=memory_trimmed,
    )


def run_child(series: int, requests: int, rounds: int) -> Result:
    """Measure one size in a fresh interpreter, so its memory figures are its own."""
    command = [sys.executable, "-m", "bench.serve_bench", "--child"]
    command += [str(series), str(requests), str(rounds)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    return Result(**json.loads(done.stdout))


# -- reporting -------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} kB"


def markdown(results: Sequence[Result], command: str) -> str:
    lines = [
        f"Command: `{command}` (each size in a fresh process).",
        "",
        *machine(),
        "",
        "Steady state: `/metrics` while the snapshot and its gzip are cached "
        "(new connection per request, client in the same process).",
        "",
        "| series | encoding | requests | p50 ms | p90 ms | p99 ms | body |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for encoding, stats, nbytes in (
            ("plain", r.plain, r.body_bytes),
            ("gzip", r.gzip, r.gzip_bytes),
        ):
            cells = [f"{r.series:,}", encoding, str(r.requests)]
            cells += [_ms(stats[f"p{p}"]) for p in PERCENTILES]
            cells.append(_size(nbytes))
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "After a change: the first scrape after a `put` (median of the rounds). The store "
        "rebuilds the body on the first request and compresses it on the first gzip request; "
        "`snapshot()` and `gzipped()` are the same two steps timed without HTTP, on a new thread "
        "as the server runs each request.",
        "",
        "| series | rounds | first plain ms | then first gzip ms | first gzip (rebuild + gzip) ms "
        "| `snapshot()` ms | `gzipped()` ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [f"{r.series:,}", str(r.rounds)]
        cells += [_ms(v) for v in (r.first_plain_ms, r.first_gzip_after_plain_ms, r.first_gzip_ms)]
        cells += [_ms(r.build_ms), _ms(r.compress_ms)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Background and memory: `render` of every family (once per poll, in the jobs), and "
        "the process's VmRSS / VmHWM in MiB at start (imports done), after filling the store "
        "and after the scrapes. The process is server and client, so the figures after the "
        "scrapes include the client's copies of the bodies and what the allocator keeps; "
        "RSS trimmed is VmRSS after `malloc_trim(0)`, store and server still alive.",
        "",
        "| series | parts | families | render ms | RSS start | RSS filled | HWM filled "
        "| RSS scraped | HWM scraped | RSS trimmed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [f"{r.series:,}", str(r.parts), str(r.families), _ms(r.render_ms)]
        cells += [_mib(r.memory_start["VmRSS"])]
        cells += [_mib(r.memory_filled["VmRSS"]), _mib(r.memory_filled["VmHWM"])]
        cells += [_mib(r.memory_scraped["VmRSS"]), _mib(r.memory_scraped["VmHWM"])]
        cells.append("n/a" if r.memory_trimmed is None else _mib(r.memory_trimmed))
        lines.append("| " + " | ".join(cells) + " |")
    largest = max(results, key=lambda r: r.series)
    lines += [
        "",
        f"Goal, p50 under 10 ms at {largest.series:,} series: steady state "
        f"{_ms(largest.plain['p50'])} ms plain, {_ms(largest.gzip['p50'])} ms gzip; "
        f"first scrape after a change {_ms(largest.first_plain_ms)} ms plain, "
        f"{_ms(largest.first_gzip_ms)} ms gzip.",
    ]
    return "\n".join(lines) + "\n"


INTRO = f"""# Benchmarks

Speed is measured here, not asserted in timed unit tests. Each section is written by its
benchmark script with `--write`; the text between a section's markers is generated.

## /metrics served from the store (`bench/serve_bench.py`)

A real `Store` (with the real self-metrics) is filled with 10,000 and 100,000 series the way
the jobs fill it: metric families with the labels the collectors use (`target`, `datname`,
`schemaname`, `relname`, `indexrelname`, `queryid`, ...), one part per (target, collector
[, database]), rendered with `exporter.exposition.render.render` and published to the store.
The real `MetricsServer` serves it on 127.0.0.1; the benchmark scrapes it from the same process with
http.client (a new connection per request), plain and with `Accept-Encoding: gzip`.
Goal: `/metrics` p50 under 10 ms at 100,000 series served from the store.

Reproduce (machine facts are in the section):

    {COMMAND}

"""


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    if not path.exists():
        path.write_text(INTRO, encoding="utf-8")
    write_marked_section(section, start=START_MARKER, end=END_MARKER, path=path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 series, 20 requests (CI)")
    parser.add_argument("--write", action="store_true", help=f"update {BENCHMARKS_MD.name}")
    parser.add_argument(
        "--child",
        nargs=3,
        type=int,
        metavar=("SERIES", "REQUESTS", "ROUNDS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asdict(measure(*args.child))))
        return 0
    if args.quick and args.write:
        parser.error("--write records the full run; drop --quick")
    sizes = QUICK if args.quick else FULL
    results = [run_child(series, requests, max(3, requests // 5)) for series, requests in sizes]
    command = ".venv/bin/python -m bench.serve_bench" + (" --quick" if args.quick else "")
    section = markdown(results, command)
    print(section, end="")
    if args.write:
        write_section(section)
        print(f"\nwrote {BENCHMARKS_MD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
