"""Targets from files, applied without a signal: a file written, changed, broken and removed
while the daemon runs against a real PostgreSQL."""

import json
from pathlib import Path

import pytest
import yaml

from exporter.catalogue import builtin_specs
from exporter.demo.embedded import LocalPostgres
from support import Samples, parse_exposition, wait_for
from support.daemon import Daemon

pytestmark = pytest.mark.any_major

FAST = {"interval": "1s", "timeout": "1s"}


def samples_of(daemon: Daemon) -> Samples:
    body = daemon.get()
    return parse_exposition(body) if body is not None else {}


def targets_up(daemon: Daemon) -> dict[str, float]:
    return {
        dict(labels)["target"]: v for (n, labels), v in samples_of(daemon).items() if n == "pg_up"
    }


def test_target_files_are_applied_as_they_change(postgres: LocalPostgres, tmp_path: Path) -> None:
    directory = tmp_path / "targets.d"
    directory.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "up_interval": "1s",
                "collectors": {
                    n: FAST if n == "connections" else {"enabled": False} for n in builtin_specs()
                },
                "target_files": {
                    "paths": [str(directory / "*.yaml"), str(directory / "*.json")],
                    "refresh_interval": "1s",
                },
                "auth_modules": {"default": {"user": "postgres", "connect_timeout": "2s"}},
            }
        )
    )
    with Daemon(config) as daemon:
        daemon.wait_serving()
        assert targets_up(daemon) == {}

        ours = directory / "ours.yaml"
        ours.write_text(yaml.safe_dump([{"name": "mine", "dsn": postgres.dsn()}]))
        sd = directory / "sd.json"
        address = f"127.0.0.1:{postgres.port}"
        sd.write_text(json.dumps([{"targets": [address], "labels": {"env": "test"}}]))
        wait_for(
            lambda: targets_up(daemon) == {"mine": 1, address: 1},
            what="both files' targets up, without a signal",
        )

        # A broken file: one log line, and the running targets stay.
        ours.write_text("- name: mine\n  dsn: [")
        wait_for(lambda: daemon.lines_with("config reload failed"), what="the rejection logged")
        assert targets_up(daemon) == {"mine": 1, address: 1}

        ours.write_text(yaml.safe_dump([{"name": "renamed", "dsn": postgres.dsn()}]))
        sd.unlink()
        wait_for(
            lambda: targets_up(daemon) == {"renamed": 1},
            what="the changed file applied and the removed one's target gone",
        )
        assert daemon.stop() == 0
    rejected = daemon.lines_with("config reload failed")
    assert len(rejected) == 1 and str(ours) in rejected[0]
