"""`pg-health-exporter demo`: the whole product on an unhealthy database, in one command.

An embedded PostgreSQL (pg_stat_statements preloaded, pgstattuple created), a small SaaS
application's database with every problem the exporter detects planted in it
(exporter/demo/workload.py) and its background traffic running, the exporter serving /metrics
and the health page (/health), and a short report once the first collection is in. Ctrl-C (or
SIGTERM) stops all of it and removes the temporary files: the database, unless --data-dir keeps
it, and the demo's config.
"""

import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.config import Config, parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.demo.workload import Planted, Workload, plant_problems
from exporter.report.format import format_text, use_colour
from exporter.signals import wait_for_signal
from exporter.units import format_duration, format_server_version, parse_listen_address

TARGET = "demo"
DATABASE = "app"
# The exporter connects as a least-privilege monitoring role (a member of pg_monitor); the
# application (the workload) as postgres.
MONITORING_ROLE = "health_exporter"
# Low, so the application's idle connections put visible pressure on it: with the exporter's
# two sessions and the workload's, about 85% of what ordinary roles may open (22) is in use.
MAX_CONNECTIONS = 25
IDLE_CONNECTIONS = 15
# Every collector polls this often (at most), so what the workload changes shows quickly.
INTERVAL_SECONDS = 15.0
FIRST_COLLECTION_TIMEOUT_SECONDS = 60.0


def _say(message: str) -> None:
    # Progress goes to the terminal as plain lines, so a first-time user sees what is happening.
    print(f"demo: {message}", flush=True)


def demo_collectors(params: Mapping[str, Mapping[str, int | float]]) -> dict[str, Any]:
    """Every PostgreSQL collector every INTERVAL_SECONDS at most, statement texts on, and the
    planted tables' thresholds (`params`)."""
    collectors: dict[str, Any] = {}
    for name, spec in builtin_specs().items():
        if spec.target_type != "postgres":
            continue
        interval = min(spec.interval, INTERVAL_SECONDS)
        collectors[name] = {
            "interval": format_duration(interval),
            "timeout": format_duration(min(spec.timeout, interval)),
        }
        if name in params:
            collectors[name]["params"] = dict(params[name])
    collectors["statement_text"]["enabled"] = True
    return collectors


def demo_raw_config(dsn: str, planted: Planted) -> dict[str, Any]:
    return {
        "up_interval": format_duration(INTERVAL_SECONDS),
        "targets": [{"name": TARGET, "dsn": dsn}],
        "collectors": demo_collectors(planted.collector_params),
    }


def demo_config(dsn: str, planted: Planted | None = None) -> Config:
    return parse_config(demo_raw_config(dsn, planted or Planted()))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(*, listen_address: str, data_dir: Path | None) -> int:
    parse_listen_address(listen_address)  # a bad address fails before anything starts
    # Until the demo waits for Ctrl-C, SIGTERM interrupts the preparation like Ctrl-C does,
    # so the cleanup below runs for both.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    scratch = Path(tempfile.mkdtemp(prefix="pg-health-demo-"))
    try:
        _run(listen_address, data_dir, scratch)
    except KeyboardInterrupt:
        _say("interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
    _say("stopped and cleaned up" + (f" (the database is kept in {data_dir})" if data_dir else ""))
    return 0


def _run(listen_address: str, data_dir: Path | None, scratch: Path) -> None:
    _say("starting an embedded PostgreSQL with pg_stat_statements and pgstattuple ...")
    with LocalPostgres(datadir=data_dir, settings={"max_connections": str(MAX_CONNECTIONS)}) as pg:
        _say(f"PostgreSQL {format_server_version(pg.version_num())} is up on port {pg.port}")
        _say(f"data directory: {pg.datadir}")
        _create_database(pg)
        dsn = pg.dsn(DATABASE)
        planted = plant_problems(dsn, progress=_say)
        monitor_dsn = pg.dsn(DATABASE, user=MONITORING_ROLE)
        workload = Workload(dsn, idle_connections=IDLE_CONNECTIONS)
        _say(
            f"starting the application's background traffic: {IDLE_CONNECTIONS} idle "
            "connections, a session idle in transaction, token lookups every "
            f"{workload.lookup_every_seconds:.0f} s and the slow report every "
            f"{workload.slow_every_seconds:.0f} s"
        )
        with workload:
            raw = demo_raw_config(monitor_dsn, planted)
            lowered = ", ".join(
                f"{collector}.{name}={value}"
                for collector, params in planted.collector_params.items()
                for name, value in params.items()
            )
            _say(
                f"the demo's tables are small, so it lowers some thresholds ({lowered}); the "
                "defaults suit production sizes. Every collector polls every "
                f"{format_duration(INTERVAL_SECONDS)} at most."
            )
            config = parse_config(raw)
            config_path = scratch / "demo.yaml"
            config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            with Exporter(config, listen_address=listen_address) as exporter:
                host, port = parse_listen_address(listen_address)
                shown = host or "localhost"
                _say(f"metrics:  http://{shown}:{port}/metrics")
                _say(f"overview: http://{shown}:{port}/")
                _say(f"health:   http://{shown}:{port}/health (JSON: /health.json)")
                _say("waiting for the first collection ...")
                _print_report(exporter, config)
                # This installation's command, runnable from any directory (make demo's is in
                # .venv/bin, not on PATH).
                script = Path(sys.executable).with_name("pg-health-exporter")
                command = shlex.quote(str(script)) if script.is_file() else "pg-health-exporter"
                _say(f"the full report at any time: {command} report --config {config_path}")
                _say("press Ctrl-C to stop and remove the demo database")
                wait_for_signal()
                _say("stopping ...")


def _create_database(pg: LocalPostgres) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            _say(f"creating the database {DATABASE}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITORING_ROLE,))
        if exists.fetchone() is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(
                    sql.Identifier(MONITORING_ROLE)
                )
            )
        # The statements worth showing are the application's, from now on.
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def _print_report(exporter: Exporter, config: Config) -> None:
    """Once every collector has run, the report on what the exporter serves (non-ok findings)."""
    expected = {
        c.name for c in config.catalogue if c.spec.enabled and c.spec.target_type == "postgres"
    }
    deadline = time.monotonic() + FIRST_COLLECTION_TIMEOUT_SECONDS
    pause = threading.Event()
    while time.monotonic() < deadline:
        status = exporter.store.targets().get(TARGET)
        if status is not None and expected <= set(status.collectors):
            break
        pause.wait(0.2)
    report = exporter.health.report(exporter.store)  # what /health shows
    print(format_text(report, colour=use_colour(sys.stdout), include_ok=False), flush=True)
