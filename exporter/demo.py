"""`pg-health-exporter demo`: the exporter against an embedded PostgreSQL, in one command."""

import logging
from pathlib import Path

import psycopg

from exporter.app import Exporter
from exporter.config import Config, parse_config
from exporter.embedded import LocalPostgres
from exporter.signals import wait_for_signal
from exporter.units import parse_listen_address

log = logging.getLogger(__name__)


def demo_config(dsn: str) -> Config:
    return parse_config({"targets": [{"name": "demo", "dsn": dsn}]})


def _say(message: str) -> None:
    # Progress goes to the terminal as plain lines, so a first-time user sees what is happening.
    print(f"demo: {message}", flush=True)


def run_demo(*, listen_address: str, data_dir: Path | None) -> int:
    host, port = parse_listen_address(listen_address)
    _say("starting an embedded PostgreSQL with pg_stat_statements ...")
    with LocalPostgres(datadir=data_dir) as server:
        _say(f"PostgreSQL {server.version_num()} is up on port {server.port}")
        _say(f"data directory: {server.datadir}")
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        with Exporter(demo_config(server.dsn()), listen_address=listen_address):
            shown_host = host or "localhost"
            _say(f"metrics:  http://{shown_host}:{port}/metrics")
            _say(f"overview: http://{shown_host}:{port}/")
            _say("press Ctrl-C to stop and remove the demo database")
            wait_for_signal()
        _say("stopping ...")
    _say("stopped and cleaned up")
    return 0
