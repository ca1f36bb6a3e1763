"""What the test tiers share: waits with deadlines, scrapes and their samples, configs, tools."""

import gzip
import os
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.units import format_duration, parse_duration

# The run_exporter fixture (conftest.py): start an in-process exporter, stopped after the test.
RunExporter = Callable[[Config], Exporter]

REPO = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        last: Any = None
        while not deadline.is_set():
            last = condition()
            if last:
                return last
            deadline.wait(0.1)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
    finally:
        timer.cancel()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (another process may take it first;
    the servers the tests start retry with a new one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str, package: str) -> str:
    """The path of a program the tests drive (promtool, amtool...). Missing is a failure, not a
    skip: a suite that silently skips its real-tool checks proves nothing. `make test` unpacks
    them all into .cache/tools."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `make test` unpacks it into .cache/tools "
            f"(or run .ci/install-tools.sh {package})",
            pytrace=False,
        )
    return path


def promtool_check_metrics(body: bytes) -> str:
    """What `promtool check metrics` says of an exposition body (nothing when it is clean);
    fails the test when promtool rejects it."""
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, problems
    return problems


def parse_exposition(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_text(port: int, *, accept_gzip: bool = False, timeout: float = 5.0) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept_gzip:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body.decode()


def scrape(port: int, **kwargs: Any) -> Samples:
    return parse_exposition(scrape_text(port, **kwargs))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample with this name whose labels include `labels`."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def enabled_postgres_collectors() -> set[str]:
    return {
        name
        for name, spec in builtin_specs().items()
        if spec.enabled and spec.target_type == "postgres"
    }


def collector_states(samples: Samples) -> dict[str, float]:
    """collector -> pg_exporter_collector_up."""
    return {
        dict(labels)["collector"]: v
        for (name, labels), v in samples.items()
        if name == "pg_exporter_collector_up"
    }


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


FAST_COLLECTORS = ("connections", "database", "database_size")


def exporter_config(
    dsn: str, *, interval: str = "1s", all_collectors: bool = False, **extra: Any
) -> Config:
    """A config for tests: the fast collectors (or, with all_collectors, every built-in) on
    `interval`; the others keep their defaults (they still run once at start-up)."""
    seconds = parse_duration(interval)
    collectors: dict[str, Any] = {}
    for name, spec in builtin_specs().items():
        if name in FAST_COLLECTORS or all_collectors:
            collectors[name] = {
                "interval": interval,
                "timeout": format_duration(min(spec.timeout, seconds)),
            }
    collectors.update(extra.pop("collectors", {}))
    raw = {
        "up_interval": interval,
        # Visits unpaced: the tests' server holds many databases, and their collectors run
        # every `interval` (tests/db/test_rounds.py tests the pacing).
        "targets": [
            {"name": "pg", "dsn": dsn, "connect_timeout": "2s", "visit_logins_per_minute": "off"}
        ],
        "collectors": collectors,
        **extra,
    }
    return parse_config(raw)


_database_counter = iter(range(1_000_000))


@contextmanager
def fresh_database(postgres: LocalPostgres) -> Iterator[str]:
    """A new, empty database on the server, dropped afterwards."""
    name = f"t{os.getpid()}_{next(_database_counter)}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
