"""The migration guide's mapping against the real Go exporter: Debian's
prometheus-postgres-exporter runs on its defaults against the test server, and every metric name
it publishes must be in exporter/gocompat/mapping.yaml, with ours or with the reason there is
none. Its names depend on the server's version (PostgreSQL 17 broke its bgwriter collector;
each major adds settings and columns), so this runs on every major."""

import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from exporter.demo.embedded import LocalPostgres
from exporter.gocompat import load_mapping
from support import free_port, parse_exposition, tool, value, wait_for

STOP_DEADLINE = 30.0


@contextmanager
def go_exporter(server: LocalPostgres) -> Iterator[int]:
    """Their exporter on a free port, as the side-by-side benchmark runs it (bench/gobench.py)."""
    binary = tool("prometheus-postgres-exporter", "prometheus-postgres-exporter")
    # Nothing of the test run's environment may reconfigure it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATA_SOURCE_"))}
    env["DATA_SOURCE_NAME"] = (
        f"postgresql://postgres@127.0.0.1:{server.port}/postgres?sslmode=disable"
    )
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE)
        if process.stderr is not None:
            process.stderr.close()


def scraped(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def sample_names(body: str) -> set[str]:
    """The names as written, which queries use: prometheus_client's parser would add `_total`
    to their counters, which have none."""
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def test_every_go_metric_is_in_the_mapping(postgres: LocalPostgres) -> None:
    with go_exporter(postgres) as port:

        def connected() -> str | None:
            body = scraped(port)
            # pg_up 1: it reached the server, so its database metrics are all there.
            return body if body and value(parse_exposition(body), "pg_up") == 1 else None

        body = wait_for(connected, timeout=60, what="the Go exporter connected")
    names = sample_names(body)
    assert {"pg_stat_database_xact_commit", "pg_stat_activity_count", "pg_locks_count"} <= names
    mapping = load_mapping()
    unlisted = sorted(name for name in names if mapping.find(name) is None)
    assert not unlisted, (
        "published by the Go exporter, missing from exporter/gocompat/mapping.yaml "
        f"(give ours, or why there is none): {unlisted}"
    )
