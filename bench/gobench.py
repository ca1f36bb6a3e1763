"""Benchmark: pg-health-exporter against the Go postgres_exporter, side by side, same database.

One PostgreSQL cluster (Debian's PostgreSQL 15 by default) with pg_stat_statements preloaded
gets, one size at a time, a database of S = 100, M = 2,000 or L = 10,000 tables (four schemas;
each table an identity primary key, two secondary indexes and 100 rows, ANALYZEd) and a
workload that leaves about 5,000 distinct statements in pg_stat_statements. Against that
database, one after the other, alternating (Go, ours, ours, Go; the next size starts with
ours), each exporter runs as a subprocess in its default configuration and in a "full" one:

- Go: Debian's `prometheus-postgres-exporter` (DATA_SOURCE_NAME names the size's database);
  full adds `--extend.query-path=bench/go_queries.yaml` (every table's pg_stat_user_tables and
  pg_statio_user_tables row, every pg_stat_statements row with the PostgreSQL 13+ columns).
- ours: `pg-health-exporter --config <generated>` with one target on the same database; full
  raises the caps of `tables` and `statements` above the number of objects (every table, every
  statement) and enables `statement_text` with the same cap.

Each exporter connects as its own role (bench_go, bench_ours; members of pg_monitor only), so
pg_stat_statements attributes database time to it. Per run: wait until ready (Go: one scrape
answered with pg_up 1; ours: pg_up 1 and every enabled collector has finished its first run),
then a window of `--window` seconds with one gzip scrape every `--interval` seconds (what
Prometheus does), then a burst of back-to-back gzip scrapes. Measured: latency of the window's
scrapes and of the burst, series and bytes of the last body, peak RSS (VmHWM), CPU
(utime + stime) over the window, and database time and calls (the role's sum of
total_exec_time and calls in pg_stat_statements) over the window, both per minute.

    .venv/bin/python -m bench.gobench                  # S, M, L; Markdown on stdout (~20 min)
    .venv/bin/python -m bench.gobench --write          # ... and update BENCHMARKS.md
    .venv/bin/python -m bench.gobench --sizes S        # one size
    .venv/bin/python -m bench.gobench --quick          # CI smoke test: S, short window, ~1 min

Exit status 1 when something is broken (an exporter exits, never serves pg_up 1, answers
other than 200, reports a scrape or collector error, or misses a deadline).
"""

import argparse
import gzip
import http.client
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psycopg

from bench.common import (
    BENCHMARKS_MD,
    REPO,
    SCHEMAS,
    SERVER_SETTINGS,
    create_tables,
    machine,
    process_memory_kib,
    progress,
    run_statements,
    setup_session,
    table_name,
    write_marked_section,
)
from bench.serve_bench import scrape
from exporter import __version__ as ours_version
from exporter.config import load_config
from exporter.demo.embedded import LocalPostgres

START_MARKER = "<!-- go-bench:start -->"
END_MARKER = "<!-- go-bench:end -->"
COMMAND = ".venv/bin/python -m bench.gobench"

SIZES = {"S": 100, "M": 2_000, "L": 10_000}
GOAL_SIZE = "L"
STATEMENTS = 5_000
ROWS_PER_TABLE = 100

# Debian's builds, unpacked into the checkout by `make bench-tools` (.ci/install-tools.sh).
DEFAULT_BINDIR = REPO / ".cache" / "postgres" / "15" / "bin"
GO_BINARY = REPO / ".cache" / "tools" / "bin" / "prometheus-postgres-exporter"
GO_QUERIES = REPO / "bench" / "go_queries.yaml"
OURS_BINARY = Path(sys.executable).with_name("pg-health-exporter")

# Full run: one scrape every 15 s (Prometheus' usual interval) over 60 s; ours' medium
# collectors run every 60 s, so a window of a multiple of 60 s holds a whole number of their
# runs. Then up to BURST_SCRAPES back-to-back scrapes, for at most BURST_SECONDS.
DEFAULT_INTERVAL = 15.0
DEFAULT_WINDOW = 60.0
BURST_SCRAPES = 20
BURST_SECONDS = 15.0
QUICK = {"interval": 5.0, "window": 10.0, "burst": 3}

# Ours' caps in "full": above the number of tables and statements of any size here.
FULL_CAP = 100_000

ROLES = {"go": "bench_go", "ours": "bench_ours"}
TARGET = "bench"
# pg_stat_statements.track = top is PostgreSQL's default (LocalPostgres sets "all"); max is
# raised so that the workload's ~5,000 statements and the exporters' own never evict each
# other during a window (checked: pg_stat_statements_info.dealloc).
PG_SETTINGS = {
    **SERVER_SETTINGS,
    "pg_stat_statements.max": "10000",
    "pg_stat_statements.track": "top",
}

START_DEADLINE = 60.0  # seconds until an exporter answers with pg_up 1
WARMUP_DEADLINE = 600.0  # seconds until ours has run every collector once
STOP_DEADLINE = 30.0
POLL_PAUSE = 0.25
# Collectors of at most this interval must have run within 5 s of start; slower ones (5 to 15
# min: bloat, index health, sequences, schema) are the costliest and may come later.
FREQUENT = 60.0
PERIOD = 60.0  # ours' medium collectors (tables, indexes, statements, ...) run every minute
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Exporter = Literal["go", "ours"]
Setup = Literal["default", "full"]


class BenchFailed(Exception):
    """Something is broken: an exporter died, served no data, or missed a deadline."""


# -- the database ---------------------------------------------------------------------------------


def table_ddl(i: int) -> str:
    """Table i: identity primary key, two secondary indexes (built after its rows), 100 rows."""
    name, short = table_name(i), f"t_{i:05d}"
    return "\n".join(
        [
            f"CREATE TABLE {name} ("
            "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "parent_id bigint, code integer NOT NULL DEFAULT 0, note text, "
            "created_at timestamptz NOT NULL DEFAULT now());",
            f"INSERT INTO {name} (code, note) "
            f"SELECT g, 'row ' || g FROM generate_series(1, {ROWS_PER_TABLE}) g;",
            f"CREATE INDEX {short}_code_idx ON {name} (code);",
            f"CREATE INDEX {short}_created_at_idx ON {name} (created_at);",
        ]
    )


@dataclass
class Database:
    name: str
    tables: int
    indexes: int
    rows: int
    statements: int  # pg_stat_statements entries after the workload
    setup_seconds: float


def database_name(size: str) -> str:
    return f"gobench_{size.lower()}"


def create_roles(server: LocalPostgres) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for role in ROLES.values():
            conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_monitor")


def build(server: LocalPostgres, size: str, statements: int) -> Database:
    """The size's database: schemas, extensions, tables with rows, ANALYZE, the workload."""
    started = time.perf_counter()
    name, tables = database_name(size), SIZES[size]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in SCHEMAS[1:]:
            conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE EXTENSION pgstattuple")
    create_tables(dsn, tables, table_ddl)
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup_session(conn)
        conn.execute("ANALYZE")
    run_statements(dsn, statements, tables)  # resets pg_stat_statements first
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_stat_user_tables),
                   (SELECT count(*) FROM pg_stat_user_indexes),
                   (SELECT coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables),
                   (SELECT count(*) FROM pg_stat_statements(false))
            """
        ).fetchone()
    assert row is not None
    return Database(name, row[0], row[1], int(row[2]), row[3], time.perf_counter() - started)


def drop(server: LocalPostgres, name: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@dataclass(frozen=True)
class Statement:
    calls: int
    exec_ms: float
    query: str


@dataclass(frozen=True)
class DbSnapshot:
    """One role's statements in pg_stat_statements (read as the superuser)."""

    statements: dict[int, Statement]  # queryid -> totals since the last reset
    dealloc: int  # pg_stat_statements_info.dealloc: evictions so far

    @property
    def exec_ms(self) -> float:
        return sum(s.exec_ms for s in self.statements.values())

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.statements.values())

    def since(self, earlier: "DbSnapshot") -> dict[int, Statement]:
        """Per statement: calls and time between `earlier` and this snapshot."""
        zero = Statement(0, 0.0, "")
        return {
            qid: Statement(
                now.calls - earlier.statements.get(qid, zero).calls,
                now.exec_ms - earlier.statements.get(qid, zero).exec_ms,
                now.query,
            )
            for qid, now in self.statements.items()
        }


def db_snapshot(conn: psycopg.Connection[tuple[object, ...]], role: str) -> DbSnapshot:
    rows = conn.execute(
        """
        SELECT s.queryid, s.calls, s.total_exec_time, s.query
        FROM pg_stat_statements(true) AS s JOIN pg_roles AS r ON r.oid = s.userid
        WHERE r.rolname = %s AND s.queryid IS NOT NULL
        """,
        (role,),
    ).fetchall()
    statements: dict[int, Statement] = {}
    for queryid, calls, exec_ms, query in rows:
        assert isinstance(queryid, int) and isinstance(calls, int)
        assert isinstance(exec_ms, float) and isinstance(query, str)
        known = statements.get(queryid, Statement(0, 0.0, query))
        statements[queryid] = Statement(known.calls + calls, known.exec_ms + exec_ms, query)
    row = conn.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()
    assert row is not None and isinstance(row[0], int)
    return DbSnapshot(statements, row[0])


# -- which collector a statement of ours belongs to ---------------------------------------------

_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^']|'')*'")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# pg_stat_statements shows constants (TRUE, FALSE and NULL too) as $n; psycopg sends our
# %(name)s parameters as $n as well. What is left, the words, identifies a statement.
_CONSTANT_WORDS = frozenset({"true", "false", "null"})
_EXTRACT_FIELD = re.compile(r"\bextract\s*\(\s*(?:\w+|\$\d+)\s+FROM", re.IGNORECASE)


def signature(sql: str) -> tuple[str, ...]:
    """The words of a statement without comments, strings, numbers and parameters."""
    text = _STRING.sub(" ", _COMMENT.sub(" ", sql))
    text = re.sub(r"%\(\w+\)s", " ", text)
    # PostgreSQL 14+ reads extract(epoch FROM x) as extract('epoch', x): a constant.
    text = _EXTRACT_FIELD.sub("extract( FROM", text)
    return tuple(w.lower() for w in _WORD.findall(text) if w.lower() not in _CONSTANT_WORDS)


# A statement's collector, the collector's interval, and the query's own (slower) interval.
Owner = tuple[str, float, float]


def collector_signatures(config_path: Path) -> dict[tuple[str, ...], Owner]:
    """Every SQL of ours' enabled collectors: signature -> (collector, interval, its query's)."""
    config = load_config(config_path)
    found: dict[tuple[str, ...], Owner] = {}
    for c in config.catalogue:
        if not c.spec.enabled or c.spec.target_type != "postgres":
            continue
        for query in c.spec.queries:
            for branch in query.alternatives:
                found[signature(branch.sql)] = (c.name, c.spec.interval, query.interval or 0.0)
    return found


# -- the exporters --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def go_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], check=True, capture_output=True, text=True)
    first = (done.stdout or done.stderr).splitlines()[0]
    match = re.search(r"version (\S+)", first)
    return match.group(1) if match else first


def ours_config(port: int, dsn: str, database: str, setup: Setup) -> dict[str, object]:
    config: dict[str, object] = {
        "listen_address": f"127.0.0.1:{port}",
        "targets": [{"name": TARGET, "dsn": dsn, "databases": {"include": [re.escape(database)]}}],
    }
    if setup == "full":
        config["collectors"] = {
            "tables": {
                "params": {
                    "max_tables": FULL_CAP,
                    "max_flagged_tables": FULL_CAP,
                    "max_tables_per_target": FULL_CAP,
                }
            },
            "statements": {"params": {"max_statements": FULL_CAP}},
            "statement_text": {"enabled": True, "params": {"max_statements": FULL_CAP}},
        }
    return config


@dataclass
class Process:
    exporter: Exporter
    setup: Setup
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    # ours only: enabled collector -> interval in seconds; SQL signature -> (collector, interval)
    collectors: dict[str, float] = field(default_factory=dict)
    signatures: dict[tuple[str, ...], Owner] = field(default_factory=dict)
    strict: bool = False  # any collector error is a failure (the smoke test)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchFailed(
                f"{self.exporter} ({self.setup}) exited with {self.popen.returncode}:\n"
                + tail(self.log_path)
            )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def clean_env() -> dict[str, str]:
    """Our environment without variables that would reconfigure either exporter."""
    prefixes = ("PG", "DATA_SOURCE_", "PG_EXPORTER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@contextmanager
def running(
    exporter: Exporter,
    setup: Setup,
    *,
    server: LocalPostgres,
    database: str,
    workdir: Path,
    go_binary: Path,
) -> Iterator[Process]:
    """Start one exporter on a free port; stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    log_path = workdir / f"{exporter}-{setup}-{database}.log"
    env = clean_env()
    collectors: dict[str, float] = {}
    signatures: dict[tuple[str, ...], Owner] = {}
    if exporter == "go":
        env["DATA_SOURCE_NAME"] = (
            f"postgresql://{ROLES['go']}@127.0.0.1:{server.port}/{database}?sslmode=disable"
        )
        argv = [str(go_binary), f"--web.listen-address=127.0.0.1:{port}"]
        if setup == "full":
            argv.append(f"--extend.query-path={GO_QUERIES}")
    else:
        config_path = workdir / f"ours-{setup}-{database}.yaml"
        dsn = server.dsn(database, user=ROLES["ours"])
        # JSON is YAML.
        config_path.write_text(json.dumps(ours_config(port, dsn, database, setup), indent=2))
        config = load_config(config_path)
        collectors = {
            c.name: c.spec.interval
            for c in config.catalogue
            if c.spec.enabled and c.spec.target_type == "postgres"
        }
        signatures = collector_signatures(config_path)
        argv = [str(OURS_BINARY), "--config", str(config_path), "--log.level", "warning"]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    process = Process(exporter, setup, popen, port, log_path, collectors, signatures)
    try:
        yield process
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=STOP_DEADLINE)


def gunzip(body: bytes) -> bytes:
    return gzip.decompress(body)


_SAMPLE = re.compile(
    rb"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)"
)


def samples(text: bytes, prefix: bytes) -> Iterator[tuple[str, dict[str, str], float]]:
    """The samples of metrics starting with `prefix`: (name, labels, value). Simple labels only."""
    for line in text.split(b"\n"):
        if not line.startswith(prefix):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', (match["labels"] or b"").decode()))
        yield match["name"].decode(), labels, float(match["value"])


def count_series(text: bytes) -> int:
    return sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))


def try_scrape(port: int) -> tuple[float, bytes] | None:
    """A gzip scrape, or None when the exporter does not answer (yet)."""
    try:
        return scrape(port, gzipped=True)
    except (OSError, http.client.HTTPException, RuntimeError):
        return None


def pg_up(text: bytes, exporter: Exporter) -> bool:
    for name, labels, value in samples(text, b"pg_up"):
        if name == "pg_up" and (exporter == "go" or labels.get("target") == TARGET):
            return value == 1
    return False


@dataclass(frozen=True)
class Ready:
    seconds: float  # from the start of the process until ready
    first_answer: float  # time.monotonic() of the first answered scrape
    # ours: until every collector of at most FREQUENT seconds has run once (the slower,
    # costlier ones may come later)
    frequent_seconds: float


def wait_ready(process: Process) -> Ready:
    """Poll until the exporter serves pg_up 1 (and ours has run every collector once)."""
    started = time.monotonic()
    deadline = started + START_DEADLINE
    first_answer: float | None = None
    while True:
        process.check_alive()
        got = try_scrape(process.port)
        if got is not None:
            first_answer = first_answer or time.monotonic()
            if pg_up(gunzip(got[1]), process.exporter):
                break
        if time.monotonic() > deadline:
            raise BenchFailed(
                f"{process.exporter} ({process.setup}) served no pg_up 1 within "
                f"{START_DEADLINE:.0f} s:\n{tail(process.log_path)}"
            )
        time.sleep(POLL_PAUSE)
    frequent_done = time.monotonic()
    if process.exporter == "ours":
        frequent_done = wait_collected(process, started + WARMUP_DEADLINE)
    assert first_answer is not None
    return Ready(time.monotonic() - started, first_answer, frequent_done - started)


def window_opening(ready: Ready, window: float) -> float:
    """When ours' window opens (time.monotonic()): half a minute off its collectors' grid.

    Ours' scheduler starts every job at once and then repeats it every interval (with a jitter
    of up to 10%, at most 5 s), just before its HTTP server answers. A window that opens 30 s
    after a multiple of 60 s from then holds exactly one run of each 1-minute collector per
    minute of window, however long a run takes (up to 25 s). For windows that are no multiple
    of 60 s (the smoke test), the window opens as soon as ours is ready.
    """
    now = time.monotonic()
    if window < PERIOD or window % PERIOD:
        return now
    grid = ready.first_answer + PERIOD / 2
    return grid + PERIOD * max(0, math.ceil((now - grid) / PERIOD))


def collector_states(text: bytes) -> dict[str, dict[str, tuple[float, dict[str, str]]]]:
    """collector -> self-metric name -> (value, labels), for our target."""
    found: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}
    for name, labels, value in samples(text, b"pg_exporter_collector_"):
        if labels.get("target") == TARGET and "collector" in labels:
            found.setdefault(labels["collector"], {})[name] = (value, labels)
    return found


def wait_collected(process: Process, deadline: float) -> float:
    """Until every enabled collector succeeded once; returns when (time.monotonic()) those of
    an interval of at most FREQUENT seconds all had.

    A failed first run is tolerated (at L, the first runs of every collector queue for the
    target's one pool connection, and a 15 s collector may give up waiting; it is counted and
    reported), except with `process.strict` (the smoke test), where any error is a failure.
    """
    frequent_done: float | None = None
    while True:
        process.check_alive()
        got = try_scrape(process.port)
        pending = set(process.collectors)
        if got is not None:
            states = collector_states(gunzip(got[1]))
            for name in list(pending):
                state = states.get(name, {})
                available = state.get("pg_exporter_collector_available", (1.0, {}))
                if "pg_exporter_collector_last_success_timestamp_seconds" in state:
                    pending.discard(name)
                elif available[0] == 0:
                    pending.discard(name)  # cannot run here (reported with its reason)
                elif process.strict and state.get("pg_exporter_collector_up", (1.0, {}))[0] == 0:
                    raise BenchFailed(
                        f"ours ({process.setup}): collector {name} failed: "
                        f"{logged_errors(process.log_path).get(name, '(not logged)')}"
                    )
            if frequent_done is None and all(
                process.collectors[name] > FREQUENT for name in pending
            ):
                frequent_done = time.monotonic()
            if not pending:
                assert frequent_done is not None
                return frequent_done
        if time.monotonic() > deadline:
            raise BenchFailed(
                f"ours ({process.setup}): collectors not done within the warm-up deadline: "
                f"{', '.join(sorted(pending))}\n{tail(process.log_path)}"
            )
        time.sleep(POLL_PAUSE)


# ours' logfmt line for a failed run; values with spaces or quotes are quoted and escaped.
_FAILED = re.compile(
    r'msg="collector failed".*?\bcollector=(?P<name>\S+)'
    r'.*?\berror=(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>\S+))'
)


def logged_errors(log_path: Path) -> dict[str, str]:
    """The first error ours logged per collector ("collector failed", logfmt)."""
    found: dict[str, str] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return found
    for match in _FAILED.finditer(text):
        error = match["quoted"] if match["quoted"] is not None else match["bare"]
        found.setdefault(match["name"], error.replace('\\"', '"'))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- one run --------------------------------------------------------------------------------------


OTHER = "(transactions, settings, probes)"


@dataclass
class RunResult:
    exporter: Exporter
    setup: Setup
    ready_seconds: float
    frequent_ready_seconds: float  # ours: every collector of at most FREQUENT s run once
    window_seconds: float
    window_ms: list[float]  # latency of each scheduled scrape
    burst_ms: list[float]
    series: int
    gzip_bytes: int
    plain_bytes: int
    whole_gzip_bytes: int  # the same body compressed at once (gzip level 6), for comparison
    hwm_kib: int
    rss_kib: int
    cpu_seconds: float  # over the window
    db_ms: float  # over the window
    calls: int  # over the window
    statements: int  # distinct statements of the role at the end
    evicted: int  # pg_stat_statements deallocations during the window (should be 0)
    # Database time and calls per minute by source: Go, by statement over the window; ours,
    # by collector in steady state (see steady_costs).
    costs: dict[str, tuple[float, float]] = field(default_factory=dict)
    # ours only: collector -> (interval in force, last duration) at the end of the window
    collectors: dict[str, tuple[float, float]] = field(default_factory=dict)
    # ours only: collector -> (failed runs, the first error logged), for collectors that failed
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)

    def per_minute(self, value: float) -> float:
        return value * 60 / self.window_seconds

    @property
    def steady_db_ms(self) -> float:
        """Database ms per minute: Go's window; ours with every collector at its interval."""
        return sum(ms for ms, _ in self.costs.values())

    @property
    def steady_calls(self) -> float:
        return sum(calls for _, calls in self.costs.values())

    def cpu_bound_extra(self) -> float:
        """Ours: CPU seconds per minute the collectors slower than the window may add: their
        last run's wall time (which bounds its CPU) over their interval."""
        return sum(
            duration * 60 / interval
            for interval, duration in self.collectors.values()
            if interval > self.window_seconds
        )


def relation_of(query: str) -> str:
    """A short name for one of Go's statements: what it reads from."""
    for match in re.finditer(r"\bFROM\s+([A-Za-z_][\w.]*)\b(?!\s*\()", query, re.IGNORECASE):
        if not re.search(r"extract\s*\(\s*[\w$]+\s*$", query[: match.start()], re.IGNORECASE):
            return match.group(1)  # not the FROM of extract(field FROM x)
    return " ".join(query.split()[:3])


def window_costs(
    window: dict[int, Statement], seconds: float, label: Callable[[Statement], str]
) -> dict[str, tuple[float, float]]:
    costs: dict[str, tuple[float, float]] = {}
    for statement in window.values():
        if statement.calls == 0:
            continue
        ms, calls = costs.get(label(statement), (0.0, 0.0))
        costs[label(statement)] = (
            ms + statement.exec_ms * 60 / seconds,
            calls + statement.calls * 60 / seconds,
        )
    return costs


def steady_costs(
    whole: dict[int, Statement],
    window: dict[int, Statement],
    seconds: float,
    signatures: dict[tuple[str, ...], Owner],
    effective: dict[str, float],
) -> dict[str, tuple[float, float]]:
    """Ours' database time and calls per minute by collector, in steady state.

    A collector's statement runs once per run (one database is visited): its mean time per
    call times runs per minute (60 / interval, the interval in force at the end: `effective`,
    which the database time budget may have stretched). The mean is the window's when the
    statement ran in it: steady state is warm, and a first run at start-up, on cold caches,
    can cost several times a later one (at 10,000 tables, `tables` 2.3 s against 0.3 s), a
    one-off that a mean over a few runs would count in every minute. A statement that did
    not run in the window (the slow collectors, bloat and index_health: every 15 min, or one
    the budget stretched) is priced at its mean over the exporter's life, first run
    included: an upper bound. Statements that belong to no collector (BEGIN, SET LOCAL,
    COMMIT, the `up` probe) count as measured in the window.
    """
    costs: dict[str, tuple[float, float]] = {}
    for qid, total in whole.items():
        if total.calls == 0:
            continue  # left from an earlier run of ours with another configuration
        owner = signatures.get(signature(total.query))
        if owner is not None:
            name, configured, own = owner
            interval = max(effective.get(name, configured), own)
            warm = window.get(qid)
            priced = warm if warm is not None and warm.calls > 0 else total
            ms, calls = priced.exec_ms / priced.calls * 60 / interval, 60 / interval
        else:
            name = OTHER
            ms = window[qid].exec_ms * 60 / seconds
            calls = window[qid].calls * 60 / seconds
        known = costs.get(name, (0.0, 0.0))
        costs[name] = (known[0] + ms, known[1] + calls)
    return costs


def check_body(process: Process, text: bytes) -> None:
    """The last body must say the exporter is healthy."""
    if not pg_up(text, process.exporter):
        raise BenchFailed(f"{process.exporter} ({process.setup}): pg_up is not 1")
    if process.exporter == "go":
        for name, _, value in samples(text, b"pg_exporter_last_scrape_error"):
            if name == "pg_exporter_last_scrape_error" and value != 0:
                raise BenchFailed(
                    f"go ({process.setup}): pg_exporter_last_scrape_error {value:g}:\n"
                    + tail(process.log_path)
                )
    else:
        states = collector_states(text)
        broken = [
            name
            for name in process.collectors
            if states.get(name, {}).get("pg_exporter_collector_up", (1.0, {}))[0] == 0
            and states.get(name, {}).get("pg_exporter_collector_available", (1.0, {}))[0] != 0
        ]
        if broken and process.strict:
            logged = logged_errors(process.log_path)
            raise BenchFailed(
                f"ours ({process.setup}): collectors failed: "
                + "; ".join(f"{name}: {logged.get(name, '(not logged)')}" for name in broken)
            )


def scrape_offsets(window: float, interval: float) -> list[float]:
    """When the window's scrapes start, in seconds from its opening.

    n = window / interval scrapes, as many as Prometheus makes at that interval, but spaced
    interval * (1 + 1/n) apart, so they fall at n evenly spread phases of an `interval` cycle:
    Prometheus scrapes at a fixed phase it picks at random, and ours' fast collectors run every
    15 s, so a scrape's latency depends on where it falls between their runs. Always in the
    window: the last starts at (n - 1/n) * interval.
    """
    n = max(1, round(window / interval))
    return [k * interval * (1 + 1 / n) for k in range(n)]


def measure(
    process: Process,
    stats: psycopg.Connection[tuple[object, ...]],
    before_start: DbSnapshot,
    *,
    window: float,
    interval: float,
    burst: int,
) -> RunResult:
    """Warm up, then the window's scheduled scrapes, then the burst; `before_start` is the
    role's statements before the exporter started."""
    ready = wait_ready(process)
    pid = process.popen.pid
    role = ROLES[process.exporter]
    if process.exporter == "ours":
        pause = window_opening(ready, window) - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing to the collectors' schedule, not a readiness wait

    before_db, before_cpu = db_snapshot(stats, role), cpu_seconds(pid)
    started = time.monotonic()
    window_ms: list[float] = []
    body = b""
    for offset in scrape_offsets(window, interval):
        pause = started + offset - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the scrape schedule, not a readiness wait
        process.check_alive()
        seconds, body = scrape(process.port, gzipped=True)
        window_ms.append(seconds * 1000)
    pause = started + window - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    after_cpu, after_db = cpu_seconds(pid), db_snapshot(stats, role)
    window_seconds = time.monotonic() - started

    burst_ms: list[float] = []
    burst_started = time.monotonic()
    while len(burst_ms) < burst and (
        len(burst_ms) < 3 or time.monotonic() - burst_started < BURST_SECONDS
    ):
        seconds, body = scrape(process.port, gzipped=True)
        burst_ms.append(seconds * 1000)
    text = gunzip(body)
    check_body(process, text)
    memory = process_memory_kib(pid)

    in_window = after_db.since(before_db)
    collectors: dict[str, tuple[float, float]] = {}
    if process.exporter == "ours":
        durations = {
            labels["collector"]: value
            for name, labels, value in samples(text, b"pg_exporter_collector_duration_seconds")
            if labels.get("target") == TARGET
        }
        # The intervals in force: the database time budget may have stretched some.
        effective = {
            labels["collector"]: value
            for _, labels, value in samples(text, b"pg_exporter_collector_interval_seconds")
            if labels.get("target") == TARGET
        }
        collectors = {
            name: (effective.get(name, every), durations[name])
            for name, every in process.collectors.items()
            if name in durations
        }
        logged = logged_errors(process.log_path)
        errors = {
            labels["collector"]: (int(value), logged.get(labels["collector"], ""))
            for name, labels, value in samples(text, b"pg_exporter_collector_errors_total")
            if labels.get("target") == TARGET and value > 0
        }
        whole = after_db.since(before_start)
        costs = steady_costs(whole, in_window, window_seconds, process.signatures, effective)
    else:
        errors = {}
        costs = window_costs(in_window, window_seconds, lambda st: relation_of(st.query))
    return RunResult(
        exporter=process.exporter,
        setup=process.setup,
        ready_seconds=ready.seconds,
        frequent_ready_seconds=ready.frequent_seconds,
        window_seconds=window_seconds,
        window_ms=window_ms,
        burst_ms=burst_ms,
        series=count_series(text),
        gzip_bytes=len(body),
        plain_bytes=len(text),
        whole_gzip_bytes=len(gzip.compress(text, compresslevel=6)),
        hwm_kib=memory["VmHWM"],
        rss_kib=memory["VmRSS"],
        cpu_seconds=after_cpu - before_cpu,
        db_ms=after_db.exec_ms - before_db.exec_ms,
        calls=after_db.calls - before_db.calls,
        statements=len(after_db.statements),
        evicted=after_db.dealloc - before_db.dealloc,
        costs=costs,
        collectors=collectors,
        errors=errors,
    )


# -- one size -------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: str
    database: Database
    runs: list[RunResult]
    load_before: str
    load_after: str

    def run(self, exporter: Exporter, setup: Setup) -> RunResult:
        return next(r for r in self.runs if r.exporter == exporter and r.setup == setup)


def run_order(index: int) -> list[tuple[Exporter, Setup]]:
    """ABBA within a size, and the next size starts with the other exporter."""
    first: Exporter = "go" if index % 2 == 0 else "ours"
    second: Exporter = "ours" if first == "go" else "go"
    return [(first, "default"), (second, "default"), (second, "full"), (first, "full")]


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def bench_size(
    server: LocalPostgres,
    size: str,
    index: int,
    args: argparse.Namespace,
    workdir: Path,
) -> SizeResult:
    load_before = loadavg()
    progress(f"== {size}: building {SIZES[size]:,} tables (load {load_before})")
    database = build(server, size, args.statements)
    progress(
        f"{database.tables:,} tables, {database.indexes:,} indexes, {database.rows:,} rows, "
        f"{database.statements:,} statements in {database.setup_seconds:.1f} s"
    )
    runs: list[RunResult] = []
    try:
        with psycopg.connect(server.dsn(database.name), autocommit=True) as stats:
            for exporter, setup in run_order(index):
                progress(f"{size}: {exporter} {setup} ...")
                before_start = db_snapshot(stats, ROLES[exporter])
                with running(
                    exporter,
                    setup,
                    server=server,
                    database=database.name,
                    workdir=workdir,
                    go_binary=args.go,
                ) as process:
                    process.strict = args.quick
                    result = measure(
                        process,
                        stats,
                        before_start,
                        window=args.window,
                        interval=args.interval,
                        burst=args.burst,
                    )
                runs.append(result)
                progress(
                    f"{size}: {exporter} {setup}: ready in {result.ready_seconds:.1f} s, "
                    f"{result.series:,} series, p50 {median(result.window_ms):.1f} ms, "
                    f"HWM {result.hwm_kib / 1024:.0f} MiB, "
                    f"CPU {result.per_minute(result.cpu_seconds):.2f} s/min, "
                    f"DB {result.per_minute(result.db_ms):.0f} ms/min"
                )
                if result.evicted:
                    progress("warning: pg_stat_statements evicted entries during the window")
    finally:
        drop(server, database.name)
    return SizeResult(size, database, runs, load_before, loadavg())


# -- reporting ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _num(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _mb(kib: int) -> str:
    return f"{kib * 1024 / 1e6:.0f}"


def ratio(ours: float, go: float) -> float:
    return ours / go if go > 0 else float("inf") if ours > 0 else float("nan")


def _ratio(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == float("inf"):
        return "∞"
    if value == 0:
        return "0"
    if value < 1:
        return f"1/{1 / value:,.0f}" if value < 0.1 else f"{value:.2f}"
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


COLUMNS = (
    "| exporter | config | series | gzip body | p50 ms | p99 ms | burst p50 ms | burst p99 ms "
    "| peak RSS MB | CPU s/min | DB ms/min | DB ms/min steady | queries/min "
    "| queries/min steady |"
)


def figures(r: RunResult) -> list[float]:
    return [
        r.series,
        r.gzip_bytes,
        median(r.window_ms),
        p99(r.window_ms),
        median(r.burst_ms),
        p99(r.burst_ms),
        r.hwm_kib,
        r.per_minute(r.cpu_seconds),
        r.per_minute(r.db_ms),
        r.steady_db_ms,
        r.per_minute(r.calls),
        r.steady_calls,
    ]


def row_cells(r: RunResult) -> list[str]:
    v = figures(r)
    return [
        "Go" if r.exporter == "go" else "ours",
        r.setup,
        f"{r.series:,}",
        _bytes(r.gzip_bytes),
        *(_ms(x) for x in v[2:6]),
        _mb(r.hwm_kib),
        f"{v[7]:.3f}" if v[7] < 1 else f"{v[7]:.2f}",
        *(_num(x) for x in v[8:]),
    ]


def size_table(result: SizeResult) -> list[str]:
    lines = [COLUMNS, "|---|---|" + "---:|" * (COLUMNS.count("|") - 3)]
    for setup in ("default", "full"):
        go, ours = result.run("go", setup), result.run("ours", setup)
        lines.append("| " + " | ".join(row_cells(go)) + " |")
        lines.append("| " + " | ".join(row_cells(ours)) + " |")
        ratios = [_ratio(ratio(o, g)) for o, g in zip(figures(ours), figures(go), strict=True)]
        lines.append(f"| **ours / Go** | {setup} | " + " | ".join(ratios) + " |")
    return lines


def top_costs(r: RunResult, count: int) -> str:
    ranked = sorted(r.costs.items(), key=lambda item: -item[1][0])
    shown = [f"`{name}` {_num(ms)}" for name, (ms, _) in ranked[:count]]
    rest = sum(ms for _, (ms, _) in ranked[count:])
    if rest:
        shown.append(f"the rest {_num(rest)}")
    return ", ".join(shown) or "none"


@dataclass
class Goal:
    text: str
    value: float  # the figure the verdict is on (the less favourable one for ours)
    limit: float
    shown: str  # how the figures are written

    @property
    def met(self) -> bool:
        return self.value <= self.limit


def goals(result: SizeResult) -> list[Goal]:
    go_d, ours_d = result.run("go", "default"), result.run("ours", "default")
    go_f, ours_f = result.run("go", "full"), result.run("ours", "full")

    def latency(limit: float, setup: str, go: RunResult, ours: RunResult) -> Goal:
        value = ratio(median(ours.window_ms), median(go.window_ms))
        shown = (
            f"{_ms(median(ours.window_ms))} ms / {_ms(median(go.window_ms))} ms = {_ratio(value)}"
        )
        return Goal(
            f"`/metrics` p50 with gzip, {setup}: at most {_ratio(limit)}", value, limit, shown
        )

    def db(limit: float, setup: str, go: RunResult, ours: RunResult) -> Goal:
        go_ms = max(go.per_minute(go.db_ms), go.steady_db_ms)
        window, steady = ours.per_minute(ours.db_ms), ours.steady_db_ms
        value = ratio(max(window, steady), go_ms)
        shown = (
            f"{_num(steady)} ms/min steady ({_num(window)} in the window) / {_num(go_ms)} ms/min "
            f"= {_ratio(value)}"
        )
        return Goal(
            f"database time per minute, {setup}: at most {_ratio(limit)}", value, limit, shown
        )

    cpu_window = ours_f.per_minute(ours_f.cpu_seconds)
    cpu_bound = cpu_window + ours_f.cpu_bound_extra()
    cpu_go = go_f.per_minute(go_f.cpu_seconds)
    memory = ratio(ours_f.hwm_kib, go_f.hwm_kib)
    ours_mb = ours_d.hwm_kib * 1024 / 1e6
    return [
        latency(0.1, "defaults", go_d, ours_d),
        latency(0.02, "full", go_f, ours_f),
        db(0.5, "defaults (ours with index health, bloat and statements)", go_d, ours_d),
        db(0.25, "full", go_f, ours_f),
        Goal(
            "peak memory, full: at most 1/3",
            memory,
            1 / 3,
            f"{_mb(ours_f.hwm_kib)} MB / {_mb(go_f.hwm_kib)} MB = {_ratio(memory)}",
        ),
        Goal("peak memory of ours, defaults: under 60 MB", ours_mb, 60.0, f"{ours_mb:.0f} MB"),
        Goal(
            f"every collector of an interval up to {FREQUENT:g} s run once after start, "
            "defaults: within 5 s (the slower ones may come later)",
            ours_d.frequent_ready_seconds,
            5.0,
            f"{ours_d.frequent_ready_seconds:.1f} s (all: {ours_d.ready_seconds:.1f} s)",
        ),
        Goal(
            "gzip body, defaults: at most 1.3x the whole body gzipped at once",
            ours_d.gzip_bytes / ours_d.whole_gzip_bytes,
            1.3,
            f"{_bytes(ours_d.gzip_bytes)} / {_bytes(ours_d.whole_gzip_bytes)} = "
            f"{ours_d.gzip_bytes / ours_d.whole_gzip_bytes:.2f}x",
        ),
        Goal(
            "CPU per minute, full: at most 1/4",
            ratio(cpu_bound, cpu_go),
            0.25,
            f"{cpu_window:.2f} s/min in the window, at most {cpu_bound:.2f} with the slower "
            f"collectors / {cpu_go:.2f} s/min = {_ratio(ratio(cpu_window, cpu_go))} to "
            f"{_ratio(ratio(cpu_bound, cpu_go))}",
        ),
    ]


def goal_line(goal: Goal) -> str:
    if goal.met:
        return f"- {goal.text}: {goal.shown}, met."
    return (
        f"- {goal.text}: {goal.shown}, **missed** ({goal.value / goal.limit:.1f} times the limit)."
    )


def markdown(
    results: Sequence[SizeResult],
    *,
    command: str,
    server_version: str,
    go: str,
    window: float,
    interval: float,
    burst: int,
    seconds: float,
) -> str:
    lines = [
        f"Command: `{command}` (whole run {seconds / 60:.1f} min).",
        "",
        *machine(),
        f"- PostgreSQL {server_version} (Debian's build); prometheus-postgres-exporter {go} "
        f"(Debian); pg-health-exporter {ours_version}",
        "",
        f"Window {window:g} s with a gzip scrape every {interval:g} s "
        f"({max(1, round(window / interval))} scrapes: p50 / p99 columns), then a burst of up to "
        f"{burst} back-to-back gzip scrapes (at least 3, at most {BURST_SECONDS:g} s). CPU, "
        "database time and queries are measured over the window and given per minute; peak RSS "
        "is VmHWM after the burst; series and bytes are those of the last body.",
    ]
    for result in results:
        db = result.database
        lines += [
            "",
            f"**{result.size}**: {db.tables:,} tables, {db.indexes:,} indexes, {db.rows:,} rows, "
            f"{db.statements:,} pg_stat_statements entries (built in {db.setup_seconds:.0f} s; "
            f"load average {result.load_before} before, {result.load_after} after).",
            "",
            *size_table(result),
        ]
        ours_d, ours_f = result.run("ours", "default"), result.run("ours", "full")
        ready = ", ".join(
            f"{r.exporter} {r.setup} {r.ready_seconds:.1f} s"
            + (
                f" (up to {FREQUENT:g} s: {r.frequent_ready_seconds:.1f} s)"
                if r.exporter == "ours"
                else ""
            )
            for r in result.runs
        )
        lines += [
            "",
            "Database ms per minute by source. Go (its statements in the window): "
            f"default {top_costs(result.run('go', 'default'), 4)}; "
            f"full {top_costs(result.run('go', 'full'), 4)}. "
            "Ours (steady state, by collector): "
            f"default {top_costs(ours_d, 6)}; full {top_costs(ours_f, 6)}.",
            "",
            f"Ours' CPU: the collectors slower than the window may add up to "
            f"{ours_d.cpu_bound_extra():.3f} s/min (default) and {ours_f.cpu_bound_extra():.3f} "
            f"s/min (full) to the window's figure (their last run's wall time / interval). "
            f"Ready (ours: every collector run once) after: {ready}. Distinct statements per "
            "role at the end: "
            + ", ".join(f"{r.exporter} {r.setup} {r.statements}" for r in result.runs)
            + ".",
        ]
        failed = [
            f"ours {r.setup}: {name} {count} ({message or 'no message logged'})"
            for r in result.runs
            for name, (count, message) in sorted(r.errors.items())
        ]
        if failed:
            lines += [
                "",
                "Collector runs that failed (the bench waits until each collector has "
                "succeeded once): " + "; ".join(failed).replace("|", "\\|") + ".",
            ]
        evicted = sum(r.evicted for r in result.runs)
        if evicted:
            lines.append(f"**pg_stat_statements evicted entries during a window ({evicted}).**")
    at_goal = [r for r in results if r.size == GOAL_SIZE]
    if at_goal:
        lines += ["", f"Goals at {GOAL_SIZE} ({SIZES[GOAL_SIZE]:,} tables), ours / Go:", ""]
        lines += [goal_line(g) for g in goals(at_goal[0])]
    else:
        lines += ["", f"(The goals apply at {GOAL_SIZE}; this run did not include it.)"]
    return "\n".join(lines) + "\n"


INTRO = f"""## Side by side with the Go exporter (`bench/gobench.py`)

One PostgreSQL 15 cluster (Debian's build; pg_stat_statements preloaded with
`pg_stat_statements.max = 10000` and PostgreSQL's default `track = top`; fsync,
synchronous_commit and full_page_writes off for a fast setup) gets, one size at a time, a
database of S = 100, M = 2,000 or L = 10,000 tables in four schemas, each with an identity
primary key, two secondary indexes and 100 rows, ANALYZEd, with pg_stat_statements and
pgstattuple; then 5,000 distinct statements (other tables and predicate shapes, each run twice
with different constants) leave about 5,000 entries in pg_stat_statements. Both exporters then
run against that database as subprocesses, one after the other (Go, ours, ours, Go; the next
size starts with ours), each as its own role, a member of `pg_monitor` and nothing else:

- **Go**: Debian's `prometheus-postgres-exporter`, `DATA_SOURCE_NAME` naming the database.
  *default*: no flags. *full*: `--extend.query-path=bench/go_queries.yaml`: every row of
  pg_stat_user_tables and pg_statio_user_tables, and of pg_stat_statements with the
  PostgreSQL 13+ columns (total_exec_time etc.), as in the example queries the package ships,
  plus postmaster start time and replication lag. It runs all its SQL on every scrape.
- **ours**: `pg-health-exporter --config <generated>`, one target on the same database
  (`databases.include` lists only it, as the Go exporter sees only its DSN's database).
  *default*: the built-in collectors with their default intervals and caps (`statement_text`
  off; `tables` publishes the top 25 tables per ranking plus flagged ones, `indexes` the top
  50, `statements` the top 100 per ranking; `all_` totals cover the rest). *full*:
  `tables.params.max_tables` and `max_flagged_tables` and `statements.params.max_statements`
  set to {FULL_CAP:,} (every table and every statement published; indexes stay capped), and
  `statement_text` enabled with the same cap. It collects in the background at each
  collector's interval (15 s, 1 min, 5 to 15 min), scraped or not.

What is measured, per exporter and configuration:

- **Window**: {DEFAULT_WINDOW:g} s (`--window`), with one gzip scrape per 15 s of it, as
  Prometheus makes at a 15 s interval. Prometheus scrapes at a fixed phase it picks at random,
  and ours' fast collectors run every 15 s, so the n scrapes are spaced 15 * (1 + 1/n) s
  apart: they fall at n evenly spread phases of that 15 s cycle, the worst one (a scrape as a
  collector starts) included. Ours is warmed up until every enabled collector has finished its
  first run, and its window opens 30 s after a whole minute of its schedule, so a 60 s window
  holds exactly one run of each 1-minute collector; Go gets one scrape before its window.
- **Latency** (p50 / p99): from sending `GET /metrics` with `Accept-Encoding: gzip` on a new
  connection to having read the whole compressed body (client on the same machine), over the
  window's scrapes; **burst**: up to {BURST_SCRAPES} back-to-back scrapes after the window
  (at most {BURST_SECONDS:g} s, at least 3), which ours mostly answers from its cached body.
- **Series** and **gzip body**: of the last body, the exporters' own metrics (`go_*`,
  `process_*`, `pg_exporter_*`) included. **Peak RSS**: VmHWM of the process after the burst
  (MB = 10^6 bytes).
- **CPU**: utime + stime of the process over the window, per minute.
- **DB ms/min** and **queries/min**: the growth of the sums of `total_exec_time` and `calls`
  over the role's pg_stat_statements entries during the window, per minute (planning is not
  tracked; connecting is not a statement). The Go exporter runs its SQL per scrape, so its
  window is its steady state. Ours runs its collectors on their own schedule, and those slower
  than 1 minute (bloat and index_health every 15 min, schema 10 min, sequences, database_size
  and wraparound 5 min) rarely run inside the window, so **steady** adds them at their rate:
  each statement of a collector (recognised by its SQL, from the catalogue) costs its mean
  time per call in the window if it ran there (steady state is warm: a first run on cold
  caches costs several times a later one), else over the exporter's life, first run
  included, once per run, 60 / interval runs a minute; statements of no
  collector (BEGIN, SET LOCAL, COMMIT, the `up` probe) count as measured. For CPU, the
  slower collectors' share is given as a bound (their last run's wall time over their
  interval).

The goal verdicts take, for ours, the less favourable of the window's and the steady figure.

Reproduce (2 CPUs here; numbers taken while other work runs are noisy, so the load average
before and after each size is given):

    make bench-tools    # Debian's prometheus-postgres-exporter and PostgreSQL 15, into .cache
    {COMMAND} --write

`{COMMAND} --quick` is the smoke test (size S, a 10 s window with a scrape every 5 s, about
a minute): it fails when either exporter does not serve `pg_up 1`, answers other than 200,
reports a scrape or collector error, or exits.

"""


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    write_marked_section(section, start=START_MARKER, end=END_MARKER, intro=INTRO, path=path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default=",".join(SIZES),
        help=f"comma-separated sizes from {', '.join(f'{k}={v:,}' for k, v in SIZES.items())} "
        "tables (default: all)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help=f"measurement window in seconds (default {DEFAULT_WINDOW:g}; a multiple of 60 keeps "
        "ours' 1-minute collectors whole)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help=f"seconds between scrapes in the window (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=None,
        help=f"back-to-back scrapes after the window (default {BURST_SCRAPES})",
    )
    parser.add_argument("--statements", type=int, default=STATEMENTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke test: size S, window {QUICK['window']:g} s, a scrape every "
        f"{QUICK['interval']:g} s, {QUICK['burst']} burst scrapes",
    )
    parser.add_argument(
        "--bindir",
        type=Path,
        default=DEFAULT_BINDIR,
        help=f"PostgreSQL binaries (default {DEFAULT_BINDIR})",
    )
    parser.add_argument(
        "--go", type=Path, default=GO_BINARY, help=f"the Go exporter (default {GO_BINARY})"
    )
    parser.add_argument("--write", action="store_true", help=f"update {BENCHMARKS_MD.name}")
    args = parser.parse_args(argv)
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown size(s): {', '.join(unknown)}")
    if args.quick:
        if args.write:
            parser.error("--write records a full run; drop --quick")
        sizes = ["S"]
    defaults = (
        QUICK
        if args.quick
        else {
            "interval": DEFAULT_INTERVAL,
            "window": DEFAULT_WINDOW,
            "burst": BURST_SCRAPES,
        }
    )
    for name in ("interval", "window", "burst"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.interval <= 0 or args.window < args.interval or args.burst < 1:
        parser.error("need interval > 0, window >= interval and burst >= 1")
    for binary in (args.go, OURS_BINARY):
        if not binary.is_file():
            parser.error(f"{binary} not found (make bench-tools; make install)")

    command = COMMAND
    for flag, value, default in (
        ("--sizes", ",".join(sizes), ",".join(SIZES)),
        ("--window", f"{args.window:g}", f"{DEFAULT_WINDOW:g}"),
        ("--interval", f"{args.interval:g}", f"{DEFAULT_INTERVAL:g}"),
        ("--burst", str(args.burst), str(BURST_SCRAPES)),
    ):
        if args.quick:
            break
        if value != default:
            command += f" {flag} {value}"
    if args.quick:
        command += " --quick"

    started = time.perf_counter()
    results: list[SizeResult] = []
    server = LocalPostgres(bindir=args.bindir, settings=PG_SETTINGS)
    try:
        with tempfile.TemporaryDirectory(prefix="gobench-") as tmp:
            server.start()
            create_roles(server)
            server_version = server_version_of(server)
            for index, size in enumerate(sizes):
                results.append(bench_size(server, size, index, args, Path(tmp)))
    except (BenchFailed, psycopg.Error, OSError, RuntimeError) as exc:
        print(f"gobench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.cleanup()
    seconds = time.perf_counter() - started
    section = markdown(
        results,
        command=command,
        server_version=server_version,
        go=go_version(args.go),
        window=args.window,
        interval=args.interval,
        burst=args.burst,
        seconds=seconds,
    )
    print(section, end="")
    if args.write:
        write_section(section)
        progress(f"wrote {BENCHMARKS_MD}")
    return 0


def server_version_of(server: LocalPostgres) -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0]).split()[0]


if __name__ == "__main__":
    sys.exit(main())
