"""The daemon started as a Go postgres_exporter user starts it: the target from DATA_SOURCE_URI,
DATA_SOURCE_USER(_FILE) and DATA_SOURCE_PASS(_FILE) against a server that checks the password,
metrics on --web.telemetry-path, --log.level warn, --config.file."""

from pathlib import Path

import pytest
import yaml

from exporter.demo.embedded import LocalPostgres
from support import parse_exposition, value, wait_for
from support.auth import password_role
from support.daemon import Daemon

ROLE = "go_user"
# '@', '/' and ':' would break a URI the password was pasted into.
SECRET = "Go@pass/Zx9qLeak:1"


@pytest.fixture
def password_postgres(private_postgres: LocalPostgres) -> LocalPostgres:
    password_role(private_postgres, ROLE, SECRET)
    return private_postgres


def uri(server: LocalPostgres) -> str:
    return f"127.0.0.1:{server.port}/postgres?sslmode=disable"


def collected(daemon: Daemon, path: str) -> bool:
    body = daemon.get(path)
    samples = parse_exposition(body) if body else {}
    database = value(samples, "pg_exporter_collector_up", target="default", collector="database")
    return value(samples, "pg_up", target="default") == 1 and database == 1


def test_target_from_files_on_the_telemetry_path(
    password_postgres: LocalPostgres, tmp_path: Path
) -> None:
    user_file, pass_file = tmp_path / "user", tmp_path / "pass"
    user_file.write_text(ROLE + "\n")
    pass_file.write_text(SECRET + "\n")
    pass_file.chmod(0o600)
    env = {
        "DATA_SOURCE_NAME": "",  # unset, whatever the test run's environment holds
        "DATA_SOURCE_URI": uri(password_postgres),
        "DATA_SOURCE_USER_FILE": str(user_file),
        "DATA_SOURCE_PASS_FILE": str(pass_file),
    }
    with Daemon(None, "--web.telemetry-path", "/prom", "--log.level", "warn", env=env) as daemon:
        daemon.wait_serving()
        wait_for(lambda: collected(daemon, "/prom"), timeout=60, what="the target collected")
        assert daemon.get("/metrics") is None  # 404: the metrics moved
        landing = daemon.get("/") or ""
        assert "href='/prom'" in landing
        assert SECRET not in landing
        assert daemon.stop() == 0
    # warn is warning: the info lines (serving, shutting down) are not written.
    assert "serving metrics" not in daemon.log()
    assert SECRET not in daemon.log() + "".join(daemon.stdout)


def test_config_file_without_targets_and_the_password_variable(
    password_postgres: LocalPostgres, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "up_interval": "1s",
                "collectors": {
                    "database": {"interval": "1s", "timeout": "1s"},
                    "tables": {"enabled": False},
                },
            }
        )
    )
    env = {
        "DATA_SOURCE_NAME": "",
        "DATA_SOURCE_URI": uri(password_postgres),
        "DATA_SOURCE_USER": ROLE,
        "DATA_SOURCE_PASS": SECRET,
    }
    # --config.file, not --config: Daemon passes no config, the flag is the test's own.
    with Daemon(None, "--config.file", str(config), "--log.level", "debug", env=env) as daemon:
        daemon.wait_serving()
        wait_for(lambda: collected(daemon, "/metrics"), timeout=60, what="the target collected")
        samples = parse_exposition(daemon.get() or "")
        assert value(samples, "pg_exporter_collector_up", collector="tables") is None
        assert daemon.stop() == 0
    assert "serving metrics" in daemon.log()
    assert SECRET not in daemon.log() + "".join(daemon.stdout)
