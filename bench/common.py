"""Helpers shared by the benchmarks: machine facts, memory, BENCHMARKS.md sections, and the
benchmark schema (tables in four schemas, built in batches) with its statement workload.

Tables are named `<schema>.t_<i:05d>` over `SCHEMAS`; every script that builds a schema gives
`create_tables` its own DDL for table i, and `statement` / `run_statements` produce distinct
pg_stat_statements entries over those tables (any DDL that has the columns id, parent_id,
code, note and created_at).

psycopg is imported only where a database is used, so importing this module does not add
to the memory that bench/serve_bench.py measures.
"""

import platform
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

SCHEMAS = ("public", "sales", "audit", "staging")
BATCH_TABLES = 200  # tables per transaction: ~1,400 locks, well within the default lock table
SETUP_WORKERS = 2

# Server settings for a fast setup of a throwaway cluster; they do not change what is collected.
SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the machine --------------------------------------------------------------------------------


def memory_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB (Linux)."""
    return process_memory_kib("self")


def process_memory_kib(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM of a process (`self` or a pid), in KiB (Linux)."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def machine() -> list[str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    cpus = subprocess.run(["nproc"], check=True, capture_output=True, text=True).stdout.strip()
    return [
        f"- CPU: {model}, {cpus} CPUs (`nproc`)",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}",
    ]


# -- BENCHMARKS.md --------------------------------------------------------------------------------


def write_marked_section(
    section: str, *, start: str, end: str, intro: str = "", path: Path = BENCHMARKS_MD
) -> None:
    """Replace the text between `start` and `end`, or append `intro` and a marked section."""
    text = path.read_text(encoding="utf-8")
    block = f"{start}\n{section}{end}"
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + intro + block + "\n"
    path.write_text(text, encoding="utf-8")


# -- the schema and the statement workload ------------------------------------------------------


def table_name(i: int) -> str:
    """Table i, qualified: tables are spread round-robin over SCHEMAS."""
    return f"{SCHEMAS[i % len(SCHEMAS)]}.t_{i:05d}"


def setup_session(conn: "psycopg.Connection[object]") -> None:
    # Setup DDL would otherwise fill pg_stat_statements with tens of thousands of entries.
    conn.execute("SET pg_stat_statements.track = 'none'")
    conn.execute("SET pg_stat_statements.track_utility = off")


def create_tables(dsn: str, tables: int, ddl: Callable[[int], str]) -> None:
    """N tables in batches of BATCH_TABLES, one transaction per batch, on SETUP_WORKERS threads.

    `ddl(i)` is the SQL that creates (and fills) table i.
    """
    import psycopg  # noqa: PLC0415 (see the module docstring)

    batches = [range(s, min(s + BATCH_TABLES, tables)) for s in range(0, tables, BATCH_TABLES)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            setup_session(conn)
            while True:
                with lock:
                    if not batches or errors:
                        return
                    batch = batches.pop(0)
                try:
                    with conn.transaction():
                        conn.execute("\n".join(ddl(i) for i in batch).encode())
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    return

    threads = [threading.Thread(target=work) for _ in range(SETUP_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# Statement shapes; each (table, shape, extra predicates) is one pg_stat_statements entry.
STATEMENT_SHAPES = (
    "SELECT count(*) FROM {t} WHERE code = {n}{more}",
    "SELECT id, note FROM {t} WHERE id = {n}{more}",
    "SELECT id FROM {t} WHERE created_at < now() - interval '{n} days'{more} LIMIT 10",
    "UPDATE {t} SET note = 'x{n}' WHERE id = -{n}{more}",
    "SELECT max(code) FROM {t} WHERE parent_id IS NULL AND code > {n}{more}",
)


def statement(i: int, tables: int, literal: int) -> str:
    """The i-th distinct statement (its normalized form), with `literal` as its constant."""
    table, rest = i % tables, i // tables
    shape, extra = rest % len(STATEMENT_SHAPES), rest // len(STATEMENT_SHAPES)
    more = "".join(f" AND id > -{literal + k}" for k in range(extra))
    return STATEMENT_SHAPES[shape].format(t=table_name(table), n=literal, more=more)


def run_statements(dsn: str, count: int, tables: int) -> None:
    """Reset pg_stat_statements, then run `count` distinct statements (twice each, different
    literals) in one pipeline."""
    import psycopg  # noqa: PLC0415 (see the module docstring)

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        with conn.pipeline() as pipeline:
            for i in range(count):
                for literal in (i % 97 + 1, i % 89 + 100):
                    conn.execute(statement(i, tables, literal).encode(), prepare=False)
                if i % 100 == 99:
                    # Statements between syncs are one implicit transaction: bound its locks.
                    pipeline.sync()
