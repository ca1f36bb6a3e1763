"""`pg-health-exporter demo` (what `make demo` runs), driven as a user would: every planted
problem is visible in /metrics and in the short report, and Ctrl-C removes everything. (The
health page in a browser: tests/stack/test_health_browser.py.)"""

import re
from pathlib import Path

import pytest

from exporter.demo.demo import DATABASE, IDLE_CONNECTIONS, TARGET
from exporter.demo.workload import Planted
from support import Samples, scrape, value
from support.demo import running_demo

pytestmark = pytest.mark.any_major


def _flagged(samples: Samples, metric: str, **labels: str) -> bool:
    return value(samples, metric, target=TARGET, datname=DATABASE, **labels) is not None


def _sum(samples: Samples, metric: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (name, ls), v in samples.items() if name == metric and wanted <= ls)


def test_demo_plants_every_problem_and_cleans_up() -> None:
    with running_demo() as demo:
        demo.wait_ready()
        port = demo.port
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
        assert demo.interrupt() == 0
    output = demo.output
    assert f"http://127.0.0.1:{port}/metrics" in output
    # The version as people write it (18.6), not server_version_num (180006).
    assert re.search(r"^demo: PostgreSQL 1\d\.\d+ is up on port", output, re.MULTILINE), output
    assert f"http://127.0.0.1:{port}/health" in output
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
