"""Scheduling: the probe's job and the collectors' jobs never collide."""

import logging
from collections.abc import Callable

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import Config
from exporter.demo.embedded import LocalPostgres
from support import exporter_config, scrape, value, wait_for


def test_custom_collector_named_up(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """`up` is a valid collector name; its job must not clash with the target's probe."""
    up = {
        "help": "Named like the probe.",
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT 1 AS answering", "metrics": {"answering": "gauge"}}],
    }
    exporter = run_exporter(exporter_config(postgres.dsn(), collectors={"up": up}))
    port = exporter.server.port

    def both() -> bool:
        samples = scrape(port)
        return (
            value(samples, "pg_up", target="pg") == 1
            and value(samples, "pg_up_answering", target="pg") == 1
        )

    wait_for(both, what="pg_up and the `up` collector's metric")


def test_a_collector_that_cannot_keep_its_interval_is_seen_and_logged(
    postgres: LocalPostgres,
    run_exporter: Callable[[Config], Exporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Saturation is never silent: runs skipped are counted, lateness published, one warning."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for db in ("slow_a", "slow_b", "slow_c"):
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")
    # Three databases of 0.6 s each: a run takes about 1.8 s, every second.
    slow = {
        "help": "Slow in every database.",
        "scope": "database",
        "databases": ["slow_.*"],
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT 1 AS here FROM pg_sleep(0.6)", "metrics": {"here": "gauge"}}],
    }
    caplog.set_level(logging.WARNING, logger="exporter.collection.scheduler")
    exporter = run_exporter(exporter_config(postgres.dsn(), collectors={"slow": slow}))
    port = exporter.server.port

    def skipped_and_late() -> bool:
        samples = scrape(port)
        skipped = value(samples, "pg_exporter_collector_runs_skipped_total", collector="slow")
        late = value(samples, "pg_exporter_collector_late_seconds", collector="slow")
        return bool(skipped) and bool(late)

    wait_for(skipped_and_late, timeout=30, what="skipped runs and a late start published")
    warnings = [
        r
        for r in caplog.records
        if r.getMessage() == "collector cannot keep its interval"
        and getattr(r, "collector", None)
        == "slow"  # the fast ones may fall behind on a busy machine
    ]
    assert len(warnings) == 1, warnings  # once, not once per skipped run
    assert getattr(warnings[0], "collector", None) == "slow"


def test_worker_pools_use_is_published(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """More jobs due than workers: the wait for a worker shows, beside the pools' size."""
    slow = {
        "help": "Slow.",
        "interval": "1s",
        "timeout": "1s",
        "queries": [{"sql": "SELECT 1 AS here FROM pg_sleep(0.5)", "metrics": {"here": "gauge"}}],
    }
    # Eight half-second jobs a second on a target of 2 connections (the default): it runs two
    # at a time, and its other jobs due wait for a worker.
    config = exporter_config(postgres.dsn(), collectors={f"slow_{n}": slow for n in range(8)})
    assert config.targets[0].max_connections == 2
    exporter = run_exporter(config)
    port = exporter.server.port

    def saturated() -> bool:
        samples = scrape(port)
        return all(
            value(samples, f"pg_exporter_worker_{counter}_seconds_total", pool="collectors")
            for counter in ("wait", "busy")  # busy: counted as each job ends
        )

    wait_for(saturated, timeout=30, what="jobs run and jobs waiting for a worker counted")
    samples = scrape(port)
    assert value(samples, "pg_exporter_workers", pool="collectors") == 16  # `workers`
    assert value(samples, "pg_exporter_workers", pool="probes") == 4
    busy = value(samples, "pg_exporter_workers_busy", pool="collectors")
    assert busy is not None and 0 <= busy <= 2  # the target's share: its connection cap
    assert value(samples, "pg_exporter_worker_jobs_queued", pool="collectors") is not None
