"""Debian's prometheus-postgres-exporter (the Go exporter) on a free port against a test server,
and its exposition read as its users' queries see it."""

import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from exporter.demo.embedded import LocalPostgres
from support import free_port, parse_exposition, tool, value, wait_for

STOP_DEADLINE = 30.0


@contextmanager
def go_exporter(server: LocalPostgres) -> Iterator[int]:
    """Their exporter on its defaults, as the side-by-side benchmark runs it (bench/gobench.py);
    yields its port once it has reached the server."""
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
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: connected(port), timeout=60, what="the Go exporter connected")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE)


def scraped(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def connected(port: int) -> bool:
    """pg_up 1: it reached the server, so its database metrics are all there."""
    body = scraped(port)
    return bool(body) and value(parse_exposition(body or ""), "pg_up") == 1


def sample_names(body: str) -> set[str]:
    """The names as written, which queries use: prometheus_client's parser would add `_total`
    to the Go exporter's counters, which have none."""
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def declared_types(body: str) -> dict[str, str]:
    """name -> the TYPE its family declares."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE))


def samples_of(body: str, name: str) -> list[tuple[str, float]]:
    """(label text, value) of each sample named exactly `name`."""
    found = []
    for line in body.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, number = line.rpartition(" ")
            found.append((head[len(name) :], float(number)))
    return found
