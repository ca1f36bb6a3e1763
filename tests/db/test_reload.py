"""SIGHUP reloads the configuration: unchanged targets keep their data and connections."""

import urllib.error
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.app import Exporter
from exporter.catalogue import builtin_specs
from exporter.demo.embedded import LocalPostgres
from exporter.web.basicauth import BasicAuth
from exporter.web.config import OPEN, WebSecurity
from support import Samples, exporter_config, parse_exposition, scrape, value, wait_for
from support.daemon import Daemon

# database_size runs once at start (1h) and never again: its last-success time tells
# whether a target was kept across a reload or opened anew.
RUNNING = {
    "database": {"interval": "1s", "timeout": "1s"},
    "connections": {"interval": "1s", "timeout": "1s"},
    "database_size": {"interval": "1h"},
}

# Nothing here depends on the PostgreSQL major: make test-majors skips it.
pytestmark = pytest.mark.any_major


def config_document(targets: list[dict[str, Any]], **collectors: Any) -> dict[str, Any]:
    chosen = {**RUNNING, **collectors}
    return {
        "up_interval": "1s",
        "collectors": {name: chosen.get(name, {"enabled": False}) for name in builtin_specs()},
        "targets": targets,
    }


def write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def samples_of(daemon: Daemon) -> Samples:
    body = daemon.get()
    return parse_exposition(body) if body is not None else {}


def size_collected_at(samples: Samples, target: str) -> float | None:
    return value(
        samples,
        "pg_exporter_collector_last_success_timestamp_seconds",
        target=target,
        collector="database_size",
    )


def pool_pids(postgres: LocalPostgres, database: str) -> set[int]:
    with psycopg.connect(postgres.dsn()) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'pg-health-exporter' AND datname = %s",
            (database,),
        ).fetchall()
    return {int(row[0]) for row in rows}


def test_sighup_reloads_targets_and_collectors(
    postgres: LocalPostgres, database: str, other_database: str, tmp_path: Path
) -> None:
    keep = {"name": "keep", "dsn": postgres.dsn(database)}
    change = {"name": "change", "dsn": postgres.dsn(other_database), "connect_timeout": "2s"}
    drop = {"name": "drop", "dsn": postgres.dsn()}
    path = tmp_path / "config.yaml"
    write(path, config_document([keep, change, drop]))

    with Daemon(path) as daemon:
        daemon.wait_serving()

        def first_round() -> Samples | None:
            samples = samples_of(daemon)
            done = all(size_collected_at(samples, t) for t in ("keep", "change", "drop"))
            return samples if done else None

        before = wait_for(first_round, what="every target's first round")
        kept_pids = wait_for(lambda: pool_pids(postgres, database), what="keep's pool")

        # keep: unchanged. change: another connect_timeout. drop: gone. add: new.
        # The connections collector is switched off for every target.
        added = {"name": "add", "dsn": postgres.dsn()}
        write(
            path,
            config_document(
                [keep, {**change, "connect_timeout": "3s"}, added],
                connections={"enabled": False},
            ),
        )
        daemon.hangup()

        def reloaded() -> Samples | None:
            samples = samples_of(daemon)
            ready = (
                size_collected_at(samples, "add")
                and size_collected_at(samples, "change") != size_collected_at(before, "change")
                and value(samples, "pg_up", target="drop") is None
                and value(samples, "pg_exporter_collector_up", collector="connections") is None
            )
            return samples if ready else None

        after = wait_for(reloaded, what="the new config in effect")
        assert size_collected_at(after, "keep") == size_collected_at(before, "keep")
        assert value(after, "pg_database_size_bytes", target="keep", datname=database)
        assert value(after, "pg_up", target="keep") == 1
        assert not [n for (n, _) in after if n.startswith("pg_connections_")]
        assert kept_pids <= pool_pids(postgres, database)  # the same pooled session(s)
        assert not [line for line in daemon.stderr if "level=error" in line]
        assert len(daemon.lines_with('msg="config reloaded"')) == 1
        assert "added=add changed=change removed=drop" in daemon.lines_with("config reloaded")[0]

        # A bad config: one log line, and the running one keeps going.
        path.write_text("targets:\n  - name: keep\n    dsn: 'host=x'\n    port: 5432\n")
        daemon.hangup()
        wait_for(lambda: daemon.lines_with("config reload failed"), what="the rejection logged")
        samples = samples_of(daemon)
        assert {value(samples, "pg_up", target=t) for t in ("keep", "change", "add")} == {1}
        assert size_collected_at(samples, "keep") == size_collected_at(before, "keep")
        assert daemon.stop() == 0
    rejected = daemon.lines_with("config reload failed")
    assert len(rejected) == 1
    assert "targets.0.port: Extra inputs are not permitted" in rejected[0]
    assert len(daemon.lines_with('msg="config reloaded"')) == 1


def test_reload_applies_a_new_web_config(postgres: LocalPostgres, tmp_path: Path) -> None:
    """In-process: the HTTP server takes the new web security for the next request."""
    config = exporter_config(postgres.dsn(), interval="1h")
    exporter = Exporter(config, listen_address="127.0.0.1:0")
    exporter.start()
    try:
        port = exporter.server.port
        wait_for(lambda: value(scrape(port), "pg_up", target="pg") == 1, what="pg_up")
        locked = WebSecurity(auth=BasicAuth({"u": b"$2b$04$" + b"x" * 53}))
        exporter.apply(config, locked)
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(port)
        refused.value.close()  # the error holds the response, and its socket, open
        assert refused.value.code == 401
        exporter.apply(config, OPEN)
        assert value(scrape(port), "pg_up", target="pg") == 1
    finally:
        exporter.stop()
