"""`pg-health-exporter demo` (what `make demo` runs), driven as a user would: every planted
problem is visible in /metrics and in the short report, and Ctrl-C removes everything."""

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exporter.demo.demo import DATABASE, IDLE_CONNECTIONS, TARGET
from exporter.demo.workload import Planted
from support import Samples, free_port, scrape, value, wait_for

pytestmark = pytest.mark.any_major


def _flagged(samples: Samples, metric: str, **labels: str) -> bool:
    return value(samples, metric, target=TARGET, datname=DATABASE, **labels) is not None


def _sum(samples: Samples, metric: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (name, ls), v in samples.items() if name == metric and wanted <= ls)


def test_demo_plants_every_problem_and_cleans_up() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(process.stdout.readline, "")) if process.stdout else None
    )
    reader.start()
    try:
        # The demo prints its report once every collector has run: all is served by then.
        wait_for(
            lambda: any("press Ctrl-C" in line for line in lines) or process.poll() is not None,
            timeout=60,
            what="the demo to be ready",
        )
        assert process.poll() is None, "".join(lines)
        samples = scrape(port)
        p = Planted()
        assert value(samples, "pg_up", target=TARGET) == 1
        states = {
            dict(labels)["collector"]: v
            for (name, labels), v in samples.items()
            if name == "pg_exporter_collector_up"
        }
        assert set(states.values()) == {1.0}, states  # every collector works as pg_monitor
        for metric, labels in (
            ("pg_index_health_unused_index_size_bytes", {"indexrelname": p.unused_index}),
            ("pg_index_health_duplicate_index_size_bytes", {"indexrelname": p.duplicate_index}),
            ("pg_index_health_invalid_index_size_bytes", {"indexrelname": p.invalid_index}),
            (
                "pg_index_health_missing_index_seq_tup_read_total",
                {"relname": p.missing_index_table},
            ),
            ("pg_index_health_unindexed_foreign_key", {"conname": p.unindexed_fk}),
        ):
            assert _flagged(samples, metric, **labels), (metric, labels)
        bloat = value(
            samples,
            "pg_bloat_table_ratio",
            datname=DATABASE,
            relname=p.bloated_table,
            method="pgstattuple",
        )
        assert bloat is not None and bloat > 0.5
        slow = [
            v
            for (name, labels), v in samples.items()
            if name == "pg_statements_mean_exec_time_seconds" and ("datname", DATABASE) in labels
        ]
        assert max(slow) >= 0.5
        texts = [
            dict(labels)["query"]
            for (name, labels), _ in samples.items()
            if name == "pg_statement_text_info"
        ]
        assert any("pg_sleep" in text for text in texts)
        # The planted session, by its application_name: the exporter's own sessions are
        # briefly idle in transaction between the queries of one collector run.
        forgotten = _sum(
            samples,
            "pg_connections_backends",
            state="idle in transaction",
            application_name="demo-app-forgotten-transaction",
        )
        assert forgotten == 1
        assert _sum(samples, "pg_connections_backends", state="idle") >= IDLE_CONNECTIONS
        idle_age = value(
            samples, "pg_connections_max_idle_in_transaction_age_seconds", datname=DATABASE
        )
        assert idle_age is not None and idle_age > 0
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    output = "".join(lines)
    assert f"http://127.0.0.1:{port}/metrics" in output
    # The short report names the planted objects with their fixes.
    assert "PostgreSQL health report" in output
    assert f"DROP INDEX CONCURRENTLY public.{p.unused_index};" in output
    assert (
        f"CREATE INDEX CONCURRENTLY ON public.{p.unindexed_fk_table} (organization_id);" in output
    )
    assert "stopped and cleaned up" in output
    found = re.search(r"data directory: (\S+)", output)
    assert found, output
    assert not Path(found.group(1)).exists()
    config = re.search(r"report --config (\S+)", output)
    assert config, output
    assert not Path(config.group(1)).parent.exists()
