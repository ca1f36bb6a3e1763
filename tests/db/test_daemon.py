"""The daemon as users run it: background collection, /metrics from memory, outages, shutdown."""

import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from exporter.demo.embedded import LocalPostgres
from support import (
    RunExporter,
    collector_states,
    enabled_postgres_collectors,
    exporter_config,
    free_port,
    names,
    parse_exposition,
    scrape,
    scrape_text,
    value,
    wait_for,
)
from support.daemon import Daemon


def collectors_ok(port: int, *expected: str) -> bool:
    samples = scrape(port)
    return all(value(samples, "pg_exporter_collector_up", collector=name) == 1 for name in expected)


def all_collected(port: int) -> bool:
    """Every enabled collector has finished its first run, and the pool stats are published."""
    samples = scrape(port)
    states = collector_states(samples)
    done = set(states) == enabled_postgres_collectors() and all(v == 1 for v in states.values())
    return done and value(samples, "pg_exporter_pool_requests_total", target="pg") is not None


def test_serves_metrics_collected_in_background(
    postgres: LocalPostgres, run_exporter: RunExporter
) -> None:
    # Hour-long intervals, but the probe's, which publishes the pool's counters.
    config = exporter_config(postgres.dsn(), interval="1h", up_interval="1s", all_collectors=True)
    exporter = run_exporter(config)
    port = exporter.server.port
    wait_for(
        lambda: (
            all_collected(port)
            and bool(value(scrape(port), "pg_exporter_pool_requests_total", target="pg"))
        ),
        what="first collection, and the pool's counters since",
    )
    samples = scrape(port)
    assert value(samples, "pg_up", target="pg") == 1
    assert value(samples, "pg_database_xact_commit_total", datname="postgres", target="pg")
    # The same snapshot, compressed or not (a probe may publish between two scrapes: retried).
    wait_for(
        lambda: scrape_text(port, accept_gzip=True) == scrape_text(port),
        what="the gzip and plain scrapes to agree",
    )
    # The exporter's own pool: max_connections 2 leaves the pool one connection.
    assert value(samples, "pg_exporter_pool_max_connections", target="pg") == 1
    requests = value(samples, "pg_exporter_pool_requests_total", target="pg")
    assert requests is not None and requests > 0


def test_landing_page_and_health(postgres: LocalPostgres, run_exporter: RunExporter) -> None:
    exporter = run_exporter(exporter_config(postgres.dsn()))
    port = exporter.server.port
    wait_for(lambda: collectors_ok(port, "database"), what="first collection")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.read() == b"ok\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        page = response.read().decode()
    assert "pg — up" in page
    assert "<td>database</td><td>ok</td>" in page
    assert "<a href='/health'>" in page
    # The health page: the target, each collector's state, the time of the data.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        health = response.read().decode()
    assert "<h2>pg <span class='state up'>up</span></h2>" in health
    assert "<td>database</td><td><span class='state ok'>ok</span></td>" in health
    assert "Data collected " in health
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
    missing.value.close()  # the error holds the response open
    assert missing.value.code == 404


def test_scrapes_run_no_sql(postgres: LocalPostgres, run_exporter: RunExporter) -> None:
    """Many scrapes (and health pages) in a row add no statements on the database: only
    scheduled jobs run SQL."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS scrape_counter")
        conn.execute("CREATE ROLE scrape_counter LOGIN IN ROLE pg_monitor")
    dsn = postgres.dsn(user="scrape_counter")
    # Hour-long intervals: after the first round, no job is due while we scrape.
    exporter = run_exporter(exporter_config(dsn, interval="1h", all_collectors=True))
    port = exporter.server.port
    wait_for(
        lambda: all_collected(port),
        what="first collection",
    )

    def statements_run() -> int:
        with psycopg.connect(postgres.dsn()) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE userid = 'scrape_counter'::regrole"
            ).fetchone()
        assert row is not None
        return int(row[0])

    before = statements_run()
    assert before > 0  # the first round did run, as that role
    for _ in range(200):
        scrape_text(port)
        scrape_text(port, accept_gzip=True)
        for path in ("/health", "/health.json"):  # judged from the store
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                assert response.status == 200
    assert statements_run() == before
    assert exporter.health.builds == 1  # nothing changed: judged once, then cached


def test_database_down_then_back(
    private_postgres: LocalPostgres, run_exporter: RunExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    exporter = run_exporter(exporter_config(private_postgres.dsn()))
    port = exporter.server.port
    wait_for(lambda: collectors_ok(port, "database"), what="first collection")

    private_postgres.stop()
    # /metrics keeps answering (each scrape must return within 2 s) with pg_up 0 ...
    wait_for(lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 0, what="pg_up 0")
    # ... and the data series go once they are older than 3 intervals: no alert on stale data.
    wait_for(
        lambda: "pg_database_xact_commit_total" not in names(scrape(port, timeout=2)),
        what="stale series dropped",
    )
    wait_for(
        lambda: (
            value(scrape(port, timeout=2), "pg_exporter_collector_up", collector="database") == 0
        ),
        what="collector reported failing",
    )
    samples = scrape(port, timeout=2)
    assert value(
        samples, "pg_exporter_collector_last_success_timestamp_seconds", collector="database"
    )

    private_postgres.start()
    wait_for(
        lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 1,
        timeout=15,
        what="pg_up back to 1",
    )
    wait_for(lambda: collectors_ok(port, "database", "connections"), what="collection resumes")
    down_lines = [r for r in caplog.records if r.getMessage() == "target is down"]
    assert len(down_lines) == 1  # one log line for the outage, not one per probe
    assert any(r.getMessage() == "target is up" for r in caplog.records)


def test_busy_pool_is_not_a_down_target(postgres: LocalPostgres, run_exporter: RunExporter) -> None:
    """A collector holding the only pooled connection for longer than connect_timeout does not
    make pg_up 0: the probe logs in on a session of its own."""
    sleeper = {
        "help": "Holds the pool's connection.",
        "interval": "1h",
        "timeout": "8s",
        "queries": [{"sql": "SELECT 1 AS slept FROM pg_sleep(6)", "metrics": {"slept": "gauge"}}],
    }
    config = exporter_config(postgres.dsn(), collectors={"sleeper": sleeper})
    config = config.model_copy(
        update={"targets": (config.targets[0].model_copy(update={"connect_timeout": 1.0}),)}
    )
    exporter = run_exporter(config)
    port = exporter.server.port

    def sleeping() -> bool:
        with psycopg.connect(postgres.dsn()) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE %s AND state = 'active'",
                ("pg-health-exporter", "%pg_sleep(6)%"),
            ).fetchone()
        return bool(row and row[0])

    wait_for(sleeping, what="the sleeper holding the pool's connection")
    probes = 0
    while sleeping():  # ~6 s: several probes at 1 s intervals, each over connect_timeout
        assert value(scrape(port), "pg_up", target="pg") == 1
        probes += 1
    assert probes > 1
    wait_for(lambda: collectors_ok(port, "sleeper"), what="the sleeper finishing")
    assert value(scrape(port), "pg_up", target="pg") == 1


def test_database_down_at_start(private_postgres: LocalPostgres, run_exporter: RunExporter) -> None:
    private_postgres.stop()
    exporter = run_exporter(exporter_config(private_postgres.dsn()))
    port = exporter.server.port
    wait_for(lambda: value(scrape(port, timeout=2), "pg_up", target="pg") == 0, what="pg_up 0")
    private_postgres.start()
    wait_for(lambda: collectors_ok(port, "database"), timeout=20, what="collection starts")


def _exporter_sessions(postgres: LocalPostgres) -> int:
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg-health-exporter'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sigterm_shuts_down_cleanly(private_postgres: LocalPostgres, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"up_interval: 1s\ntargets:\n  - name: pg\n    dsn: '{private_postgres.dsn()}'\n"
    )
    with Daemon(config) as daemon:

        def up() -> bool:
            body = daemon.get(timeout=2)
            return body is not None and value(parse_exposition(body), "pg_up", target="pg") == 1

        wait_for(up, what="exporter up")
        assert _exporter_sessions(private_postgres) >= 1
        assert daemon.stop() == 0  # SIGTERM
    assert daemon.lines_with('msg="shutting down"')
    wait_for(lambda: _exporter_sessions(private_postgres) == 0, what="sessions closed")


def test_once_prints_exposition_even_when_target_is_down(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "targets:\n"
        f"  - name: up\n    dsn: '{postgres.dsn()}'\n"
        f"  - name: down\n    dsn: 'host=127.0.0.1 port={free_port()} user=x'\n"
        "    connect_timeout: 1s\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    samples = parse_exposition(result.stdout)
    assert value(samples, "pg_up", target="up") == 1
    assert value(samples, "pg_up", target="down") == 0
    assert value(samples, "pg_database_xact_commit_total", target="up", datname="postgres")
    assert "Connection refused" in result.stderr or "connection" in result.stderr.lower()


def test_data_source_name_and_collector_switch(postgres: LocalPostgres) -> None:
    env = {**os.environ, "DATA_SOURCE_NAME": postgres.dsn()}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "once", "--no-collector.database_size"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    samples = parse_exposition(result.stdout)
    assert value(samples, "pg_up", target="default") == 1
    assert "pg_database_size_bytes" not in names(samples)
    assert "pg_database_xact_commit_total" in names(samples)
