"""The command line as a person meets it: errors in one line with exit 2, and --help."""

import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from exporter.cli import _COMMANDS, _load, _parser, main
from support import REPO

TARGET = {"name": "main", "dsn": "host=127.0.0.1 port=1 dbname=postgres"}


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` as a user runs it (a hang fails on the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def check_config_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`check-config --config PATH`, in this process: its one line of error."""
    assert main(["check-config", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def busy() -> Iterator[str]:
    """An address another socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_busy_address_fails_the_daemon_before_the_config_is_read(busy: str) -> None:
    # The config does not exist: the address is checked first.
    line = one_line_error(
        run_cli("--config", "/nonexistent/config.yaml", "--web.listen-address", busy)
    )
    assert busy in line
    assert "already in use" in line
    assert line.startswith("configuration error: --web.listen-address: ")


def test_busy_address_from_the_config_file(busy: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"listen_address": busy, "targets": [TARGET]}))
    line = one_line_error(run_cli("--config", str(config)))
    assert f"listen_address: cannot listen on {busy}: " in line


def test_busy_address_fails_the_demo_before_its_database_is_built(busy: str) -> None:
    result = run_cli("demo", "--web.listen-address", busy)
    line = one_line_error(result)
    assert busy in line
    assert "already in use" in line
    assert "embedded PostgreSQL" not in result.stdout  # nothing was started


def test_unbindable_address_names_the_reason() -> None:
    # 192.0.2.0/24 is TEST-NET-1: no interface of this machine has it.
    line = one_line_error(run_cli("demo", "--web.listen-address", "192.0.2.1:9188"))
    assert "cannot listen on 192.0.2.1:9188: no network interface" in line


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: None, "No such file or directory"),
        (lambda path: path.mkdir(), "Is a directory"),
        (lambda path: path.write_bytes(b"targets: \xff\xfe\n"), "not UTF-8 text (byte 10)"),
    ],
    ids=["missing", "directory", "not-utf8"],
)
def test_unreadable_config_or_password_file_is_one_line(
    make: Callable[[Path], object],
    reason: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unreadable = tmp_path / "unreadable"
    make(unreadable)
    line = check_config_error(unreadable, capsys)
    assert line == f"configuration error: {unreadable}: cannot read: {reason}"

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [{**TARGET, "password_file": str(unreadable)}]}))
    line = check_config_error(config, capsys)
    assert line == (
        f"configuration error: targets.0.password_file: cannot read {unreadable}: {reason}"
    )


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    subcommands = [name for name in _COMMANDS if name != "run"]
    assert "report" in subcommands
    for name in subcommands:
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.MULTILINE), name
        assert name in out.split("options:")[0]  # named in the description too, at the top


# The flags and variables of the Go postgres_exporter, as its users type them.


def test_config_file_is_the_prometheus_spelling_of_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [TARGET]}))
    assert main(["check-config", "--config.file", str(config)]) == 0
    assert "config OK: 1 target(s)" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"targets": [{**TARGET, "max_connections": 1}]}))
    assert check_config_error(config, capsys).startswith(
        "configuration error: targets.0.max_connections: "
    )


def test_environment_problems_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATA_SOURCE_NAME", raising=False)
    monkeypatch.setenv("DATA_SOURCE_URI", "db/app")
    monkeypatch.setenv("DATA_SOURCE_PASS_FILE", "/nonexistent/pass")
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "configuration error: DATA_SOURCE_PASS_FILE: cannot read /nonexistent/pass: "
        "No such file or directory"
    ]
    monkeypatch.setenv("DATA_SOURCE_URI", "db:notaport/app")
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "configuration error: DATA_SOURCE_URI: port 'notaport' is not a number"
    ]


@pytest.mark.parametrize(
    ("path", "why"),
    [("metrics", "'metrics' must start with /"), ("/healthz", "/healthz is already served")],
)
def test_bad_telemetry_path_exits_2_naming_the_flag(path: str, why: str) -> None:
    line = one_line_error(run_cli("--web.telemetry-path", path))
    assert line.startswith(f"configuration error: --web.telemetry-path: {why}")


def test_log_level_warn_is_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [TARGET]}))
    assert main(["check-config", "--config", str(config), "--log.level", "warn"]) == 0
    result = run_cli("check-config", "--config", str(config), "--log.level", "verbose")
    assert result.returncode == 2
    assert "argument --log.level: invalid choice: 'verbose'" in result.stderr


def test_their_collector_flags_switch_ours(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [TARGET]}))
    args = _parser("run").parse_args(
        ["--config", str(config), "--no-collector.stat_statements", "--collector.stat_user_tables"]
    )
    loaded = _load(args)
    assert not loaded.collector("statements").spec.enabled
    assert loaded.collector("tables").spec.enabled
    # Where their name is also ours, the flag is ours: --no-collector.database is pg_stat_database.
    args = _parser("run").parse_args(["--config", str(config), "--no-collector.database"])
    assert not _load(args).collector("database").spec.enabled
    assert _load(args).collector("database_size").spec.enabled
