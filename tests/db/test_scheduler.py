"""Scheduling: the probe's job and the collectors' jobs never collide."""

import logging
from collections.abc import Callable

import psycopg
import pytest

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
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


FIRST_RUNS_ROLE = "first_runs_monitor"


def _clock_collector(interval: str, column: str, sql: str) -> dict[str, object]:
    return {
        "help": "When it ran.",
        "interval": interval,
        "timeout": "5s",
        "queries": [{"sql": sql, "metrics": {column: "gauge", "sessions": "gauge"}}],
    }


# The exporter's sessions as the statement ends (its role's own: the tests' are not counted).
_SESSIONS = (
    "(SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
    " AND application_name = 'pg-health-exporter') AS sessions"
)


def test_first_runs_on_the_own_database_use_both_connections(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """At start, two collectors of the target's own database run at once, the second on the
    idle visiting slot: never more sessions than max_connections (2, the default)."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {FIRST_RUNS_ROLE}")
        conn.execute(f"CREATE ROLE {FIRST_RUNS_ROLE} LOGIN IN ROLE pg_monitor")
    nap = _clock_collector(
        "60s",
        "started",
        f"SELECT extract(epoch FROM statement_timestamp()) AS started, {_SESSIONS}"
        " FROM pg_sleep(2)",
    )
    # Probes every 15 s: none takes the visiting slot meanwhile. No other collector: one
    # that runs first would hold one of the target's two workers (its share) meanwhile, for as
    # long as it takes on a busy machine (database_size took a second in a full run).
    others = {name: {"enabled": False} for name in builtin_specs()}
    config = exporter_config(
        postgres.dsn(user=FIRST_RUNS_ROLE),
        interval="15s",
        collectors={**others, "nap_a": nap, "nap_b": nap},
    )
    assert config.targets[0].max_connections == 2
    port = run_exporter(config).server.port

    def both_ran() -> bool:
        samples = scrape(port)
        return all(value(samples, f"pg_{n}_started", target="pg") for n in ("nap_a", "nap_b"))

    wait_for(both_ran, timeout=30, what="both collectors' first runs")
    samples = scrape(port)
    started = [value(samples, f"pg_{n}_started", target="pg") or 0.0 for n in ("nap_a", "nap_b")]
    sessions = [value(samples, f"pg_{n}_sessions", target="pg") for n in ("nap_a", "nap_b")]
    assert abs(started[0] - started[1]) < 2, started  # each sleeps 2 s: they overlapped
    # Counted as each statement ends: the one that ends first sees the other's session too;
    # the other may see its own alone (a session on the visiting slot closes after its run).
    assert max(s or 0 for s in sessions) == 2 and all(s in (1, 2) for s in sessions), sessions


def test_slower_collectors_first_run_after_the_prompt_ones(
    postgres: LocalPostgres, run_exporter: Callable[[Config], Exporter]
) -> None:
    """A collector of a 5-minute interval starts its first run once every collector of at most
    a minute has had its own (not alongside them), and well before the up interval's bound."""
    prompt = _clock_collector(
        "60s",
        "ended",
        f"SELECT extract(epoch FROM clock_timestamp()) AS ended, {_SESSIONS} FROM pg_sleep(1)",
    )
    later = _clock_collector(
        "5m", "started", f"SELECT extract(epoch FROM clock_timestamp()) AS started, {_SESSIONS}"
    )
    # Only these two: nothing else delays the later one's start.
    alone = {name: {"enabled": False} for name in builtin_specs()}
    config = exporter_config(
        postgres.dsn(), interval="15s", collectors={**alone, "prompt": prompt, "later": later}
    )
    port = run_exporter(config).server.port

    def both_ran() -> bool:
        samples = scrape(port)
        return bool(
            value(samples, "pg_prompt_ended", target="pg")
            and value(samples, "pg_later_started", target="pg")
        )

    wait_for(both_ran, timeout=30, what="both collectors' first runs")
    samples = scrape(port)
    ended = value(samples, "pg_prompt_ended", target="pg") or 0.0
    started = value(samples, "pg_later_started", target="pg") or 0.0
    assert ended <= started < ended + 10, (ended, started)  # released, not held for 15 s
