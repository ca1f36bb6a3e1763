"""Passwords never show: a distinctive one is planted in every way a config can carry it, for
targets that are down and targets that refuse it, and every output is searched for it."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from exporter.config import parse_config
from exporter.demo.embedded import LocalPostgres
from exporter.secretfiles import exposed_secret_files
from support import REPO, free_port, parse_exposition, require_password, value, wait_for
from support.daemon import Daemon

# In every password, so a search for it finds any of them, whole or in part. The '/' and '@'
# need percent-encoding in a URI, which catches a DSN being echoed as written.
MARK = "Zx9qLeak"
ROLE = "leaky"
RIGHT = f"right/{MARK}@1"


def password(kind: str) -> str:
    return f"{kind}/{MARK}@{kind[::-1]}"


@pytest.fixture
def scram_postgres(private_postgres: LocalPostgres) -> LocalPostgres:
    """The private server, asking ROLE for its password (the others keep trust auth)."""
    return require_password(private_postgres, ROLE, RIGHT)


def targets(pg: LocalPostgres, tmp_path: Path) -> list[dict[str, Any]]:
    """Each way of giving a password, for a target that is down and one that refuses it."""
    closed = free_port()
    found = []
    for state, port in (("down", closed), ("wrong", pg.port)):
        uri = f"postgresql://{ROLE}:{quote(password(state + '-uri'), safe='')}@127.0.0.1:{port}/postgres"
        secret_file = tmp_path / f"{state}.password"
        secret_file.write_text(password(state + "-file") + "\n")
        secret_file.chmod(0o644)  # readable by others: warned about
        base = f"host=127.0.0.1 port={port} dbname=postgres user={ROLE}"
        found += [
            {"name": f"{state}-uri", "dsn": uri},
            {"name": f"{state}-keyword", "dsn": f"{base} password='{password(state + '-kw')}'"},
            {"name": f"{state}-env", "dsn": base, "password": f"${{PGHE_{state.upper()}_PW}}"},
            {"name": f"{state}-file", "dsn": base, "password_file": str(secret_file)},
        ]
    right_file = tmp_path / "right.password"
    right_file.write_text(RIGHT)
    right_file.chmod(0o600)
    base = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE}"
    found.append({"name": "right", "dsn": base, "password_file": str(right_file)})
    return [{**t, "connect_timeout": "1s"} for t in found]


ENV = {"PGHE_DOWN_PW": password("down-env"), "PGHE_WRONG_PW": password("wrong-env")}


def write_config(path: Path, pg: LocalPostgres, tmp_path: Path) -> None:
    document = {
        "up_interval": "1s",
        "collectors": {
            "database": {"interval": "1s", "timeout": "1s"},
            "connections": {"interval": "1s", "timeout": "1s"},
        },
        "targets": targets(pg, tmp_path),
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o644)


def test_passwords_appear_in_no_output(scram_postgres: LocalPostgres, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, scram_postgres, tmp_path)
    outputs: dict[str, str] = {}
    with Daemon(config, "--log.level", "debug", env=ENV) as daemon:
        daemon.wait_serving()

        def all_reported() -> dict[str, float] | None:
            body = daemon.get()
            samples = parse_exposition(body) if body else {}
            up = {dict(labels)["target"]: v for (n, labels), v in samples.items() if n == "pg_up"}
            ok = value(samples, "pg_exporter_collector_up", target="right", collector="database")
            return up if len(up) == 9 and up.get("right") == 1 and ok == 1 else None

        up = wait_for(all_reported, timeout=60, what="every target reported")
        assert {t for t, v in up.items() if v == 0} == set(up) - {"right"}
        # A few more probe rounds, then every endpoint, a reload, and a clean stop.
        wait_for(lambda: len(daemon.lines_with("collector ran")) > 20, what="debug lines")
        for path in ("/metrics", "/", "/healthz", "/health", "/health.json"):
            outputs[path] = daemon.get(path) or ""
        daemon.hangup()
        wait_for(lambda: daemon.lines_with("config reloaded"), what="the reload")
        assert daemon.stop() == 0
    outputs["stdout"] = "".join(daemon.stdout)
    outputs["stderr"] = daemon.log()
    assert "password authentication failed" in outputs["stderr"]  # the wrong ones were tried
    assert "wrong-uri — down" in outputs["/"]
    assert "<h2>wrong-uri <span class='state down'>down</span></h2>" in outputs["/health"]

    once = subprocess.run(
        [sys.executable, "-m", "exporter", "once", "--config", str(config), "--log.level", "debug"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **ENV},
        cwd=REPO,
    )
    assert once.returncode == 0, once.stderr
    outputs["once stdout"], outputs["once stderr"] = once.stdout, once.stderr

    for where, text in outputs.items():
        assert MARK not in text, f"a password in {where}"

    # The config file (a DSN with a password) and the other-readable password files are
    # warned about, once each per load (start-up and reload); the 0600 file is not.
    warned = daemon.lines_with("file holding a password is readable by group or others")
    assert sorted(w.split("path=")[1].split()[0] for w in warned) == sorted(
        [str(config), str(tmp_path / "down.password"), str(tmp_path / "wrong.password")] * 2
    )


def test_bad_config_errors_never_echo_passwords(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {"name": "a", "dsn": f"host=x password={MARK} junk", "max_connections": MARK},
                    {"name": "b", "dsn": "host=x", "password": {"nested": MARK}},
                    {"name": "c", "dsn": f"postgresql://u:{MARK}@h:notaport/db"},
                ]
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "targets.0.max_connections" in result.stderr
    assert "targets.1.password" in result.stderr
    assert MARK not in result.stdout + result.stderr


def test_which_files_are_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    only_env = tmp_path / "env.yaml"
    only_env.write_text(
        "targets:\n  - {name: a, dsn: 'postgresql://u:${PW}@h/db', password: '${PW}'}\n"
    )
    only_env.chmod(0o644)
    config = parse_config(
        {"targets": [{"name": "a", "dsn": "host=h", "password_file": str(secret)}]}
    )
    secret.chmod(0o640)
    assert exposed_secret_files(config, only_env) == [(secret, 0o640)]
    secret.chmod(0o600)
    assert exposed_secret_files(config, only_env) == []
    literal = tmp_path / "literal.yaml"
    literal.write_text("targets:\n  - {name: a, dsn: 'host=h password=pw'}\n")
    literal.chmod(0o604)
    assert exposed_secret_files(config, literal) == [(literal, 0o604)]
