"""Where ours spends CPU, memory and database time, on a database built as bench/gobench.py does.

Not a measurement (profilers slow the process down): it explains the gobench figures. On one
size (default L) and configuration (default full), with the same cluster settings, schema,
statement workload and role as gobench:

- CPU: `py-spy record` (sampling, non-blocking) on ours for `--seconds` after its warm-up;
  the collapsed stacks summed per function, inclusive and self.
- memory: ours again, under `memray run` (a Python with memray and this project: `--memray`);
  the allocations live at the peak, summed by the innermost frame in exporter/ (or the
  library that allocated, when no exporter/ frame is on the stack).
- database: `EXPLAIN (ANALYZE, BUFFERS)` of the SQL of ours' costliest collectors, as
  ours' role.

    python3 -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy memray .
    .venv/bin/python -m bench.go_profile --py-spy /tmp/prof/bin/py-spy --memray /tmp/prof/bin/python
"""

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psycopg

from bench.common import REPO, process_memory_kib, progress
from bench.gobench import (
    DEFAULT_BINDIR,
    GO_BINARY,
    PG_SETTINGS,
    ROLES,
    SIZES,
    Setup,
    build,
    clean_env,
    create_roles,
    gunzip,
    logged_errors,
    pg_up,
    running,
    stop,
    try_scrape,
    wait_ready,
)
from exporter.config import load_config
from exporter.demo.embedded import LocalPostgres

EXPLAINED = ("statements", "statement_text", "tables", "indexes")
TOP = 14
# Frames every sample has (thread start-up, the executors): not informative inclusive.
GENERIC = ("threading.", "concurrent.futures.", "apscheduler.")


def cpu_profile(pid: int, py_spy: str, seconds: float, out: Path) -> str:
    """py-spy record on a running process; the summary as Markdown lines."""
    rss: list[tuple[float, int]] = []
    done = threading.Event()

    def sample_rss() -> None:
        started = time.monotonic()
        while not done.wait(0.2):
            try:
                rss.append((time.monotonic() - started, process_memory_kib(pid)["VmRSS"]))
            except OSError:
                return

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    argv = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100"]
    argv += ["--nonblocking", "-f", "raw", "-o", str(out)]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)
    finally:
        done.set()
        sampler.join()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the thread
        for name in set(frames):
            if not name.startswith(GENERIC):
                inclusive[name] += count
        if frames:
            leaf[frames[-1]] += count
    lines = [
        f"CPU samples (100/s for {seconds:.0f} s, non-idle threads): {total:,} "
        f"= {total / 100:.1f} s of CPU, {total / 100 / seconds * 60:.1f} s per minute.",
        "",
        "| function (inclusive) | share | | function (self) | share |",
        "|---|---:|---|---|---:|",
    ]
    for (inc, n_inc), (own, n_own) in zip(
        inclusive.most_common(TOP), leaf.most_common(TOP), strict=False
    ):
        lines.append(f"| `{inc}` | {n_inc / total:.0%} | | `{own}` | {n_own / total:.0%} |")
    if rss:
        peak_at, peak = max(rss, key=lambda p: p[1])
        low = min(r for _, r in rss)
        lines += [
            "",
            f"VmRSS over the profile: {low / 1024:.0f} to {peak / 1024:.0f} MiB "
            f"(peak {peak_at:.0f} s in).",
        ]
    return "\n".join(lines)


def _frame(frame: str) -> str:
    """`function (path:line)` -> `module.function`, shortened to the project or library."""
    match = re.match(r"(?P<func>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$", frame.strip())
    if match is None:
        return frame.strip()
    return f"{_module(match['path'])}.{match['func']}"


def _module(path: str) -> str:
    if "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif str(REPO) in path:
        path = path.split(str(REPO) + "/", 1)[1]
    else:
        path = Path(path).name
    return path.removesuffix(".py").replace("/", ".")


def memory_profile(memray_python: str, config_path: Path, seconds: float, workdir: Path) -> str:
    """Ours under memray for `seconds` after it serves pg_up 1; the allocations live at the
    peak."""
    out = workdir / "ours.memray"
    argv = [memray_python, "-m", "memray", "run", "-q", "-f", "-o", str(out)]
    argv += ["-m", "exporter", "--config", str(config_path), "--log.level", "warning"]
    env = clean_env()
    env["PYTHONPATH"] = str(REPO)  # this checkout, not the copy installed beside memray
    log = (workdir / "memray.log").open("wb")
    popen = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = _port_of(config_path)
        _wait_http(port, popen)
        time.sleep(seconds)  # the profile's duration: collectors run on their schedule
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=120)
        log.close()
    csv = workdir / "peak.csv"
    subprocess.run(
        [memray_python, "-m", "memray", "transform", "csv", "-f", "-o", str(csv), str(out)],
        check=True,
        capture_output=True,
    )
    by_place: Counter[str] = Counter()
    total = 0
    for line in csv.read_text().splitlines()[1:]:
        parts = line.split(",", 5)
        if len(parts) < 6:
            continue
        size = int(parts[2])
        total += size
        by_place[_owner(parts[5])] += size
    lines = [
        f"Heap at its peak (memray, Python and C allocations; mapped libraries are not "
        f"included): {total / 1e6:.0f} MB.",
        "",
        "| allocated under | MB | share |",
        "|---|---:|---:|",
    ]
    for place, size in by_place.most_common(TOP):
        lines.append(f"| `{place}` | {size / 1e6:.1f} | {size / total:.0%} |")
    return "\n".join(lines)


def _owner(stack: str) -> str:
    """The innermost frame in exporter/, else the innermost library module."""
    frames = [f.split(";") for f in stack.split("|") if f]
    for func, path, *_ in frames:
        if f"{REPO}/exporter/" in path:
            if func == "<module>":
                return f"imports (from {_module(path)})"
            return f"{_module(path)}.{func}"
    for func, path, *_ in frames:
        if "/site-packages/" in path:
            return f"{_module(path).split('.')[0]} ({func})"
    return "other (interpreter, imports)"


def _port_of(config_path: Path) -> int:
    return int(load_config(config_path).listen_address.rpartition(":")[2])


def _wait_http(port: int, popen: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"ours under memray exited with {popen.returncode}")
        got = try_scrape(port)
        if got is not None and pg_up(gunzip(got[1]), "ours"):
            return
        time.sleep(0.5)
    raise RuntimeError("ours under memray served no pg_up 1 within 120 s")


def explain(dsn: str, config_path: Path, names: Sequence[str]) -> str:
    """EXPLAIN ANALYZE of each query of the named collectors, as ours' role."""
    catalogue = {c.name: c for c in load_config(config_path).catalogue}
    lines = ["| collector.query | execution ms | costliest plan node (inclusive ms) |"]
    lines.append("|---|---:|---|")
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.info.server_version
        for name in names:
            collector = catalogue[name]
            for query in collector.spec.queries:
                branch = query.branch_for(version)
                if branch is None:
                    continue
                params = collector.spec.params or None
                rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + branch.sql, params).fetchall()
                plan = [str(r[0]) for r in rows]
                total = next(
                    (float(p.split(":")[1].split()[0]) for p in plan if "Execution Time" in p),
                    0.0,
                )
                lines.append(f"| `{name}.{query.name}` | {total:,.0f} | {_costliest(plan)} |")
    return "\n".join(lines)


def _costliest(plan: Sequence[str]) -> str:
    """The plan node below the root with the largest inclusive actual time."""
    best, best_ms = "", -1.0
    for line in plan[1:]:
        match = re.search(r"actual time=[\d.]+\.\.(?P<ms>[\d.]+) rows=\d+ loops=(?P<n>\d+)", line)
        if match is None:
            continue
        ms = float(match["ms"]) * int(match["n"])
        if ms > best_ms:
            best, best_ms = line.strip().lstrip("-> ").split("  (")[0], ms
    return f"{best[:70]} ({best_ms:,.0f})".replace("|", "\\|") if best else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", default="L", choices=list(SIZES))
    parser.add_argument("--setup", default="full", choices=["default", "full"])
    parser.add_argument("--seconds", type=float, default=90.0, help="per profile (default 90)")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--memray", help="a Python with memray installed (memory profile)")
    parser.add_argument("--bindir", type=Path, default=DEFAULT_BINDIR)
    args = parser.parse_args(argv)
    setup: Setup = args.setup
    server = LocalPostgres(bindir=args.bindir, settings=PG_SETTINGS)
    try:
        with tempfile.TemporaryDirectory(prefix="go-profile-") as tmp:
            workdir = Path(tmp)
            server.start()
            create_roles(server)
            database = build(server, args.size, 5_000)
            progress(f"built {database.tables:,} tables in {database.setup_seconds:.0f} s")
            sections: list[str] = []
            with running(
                "ours",
                setup,
                server=server,
                database=database.name,
                workdir=workdir,
                go_binary=GO_BINARY,
            ) as process:
                wait_ready(process)
                for name, error in logged_errors(process.log_path).items():
                    sections.append(f"Warm-up: collector `{name}` failed once: {error}")
                progress("py-spy record ...")
                sections.append(
                    cpu_profile(process.popen.pid, args.py_spy, args.seconds, workdir / "cpu.txt")
                )
                stop(process.popen)
            config_path = workdir / f"ours-{setup}-{database.name}.yaml"
            progress("EXPLAIN ANALYZE ...")
            sections.append(
                explain(server.dsn(database.name, user=ROLES["ours"]), config_path, EXPLAINED)
            )
            if args.memray:
                progress("memray run ...")
                sections.append(memory_profile(args.memray, config_path, args.seconds, workdir))
    finally:
        server.cleanup()
    print(f"Profile of ours ({setup}) at {args.size} ({SIZES[args.size]:,} tables):\n")
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
