"""Every command in README.md's shell blocks works as written, on this checkout (what a fresh
clone has after `make test`: .venv from `make install`, which is `pip install -e .`).

The commands are taken from the README's ```sh blocks. Each is run here verbatim, through bash
(`pg-health-exporter` from .venv/bin, as after `pip install .`), against a real server, or
listed in NOT_RUN with the reason; a command added to the README fails
test_every_readme_command_is_run_or_excused until it is one or the other. The monitoring
role's SQL is run verbatim too, and the commands then connect as that role.

The daemon and the demo listen on the README's port, 9188, which must be free.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.demo.embedded import LocalPostgres
from support import REPO, parse_exposition, scrape, value, wait_for

pytestmark = pytest.mark.any_major

README = (REPO / "README.md").read_text(encoding="utf-8")
PORT = 9188
VENV_BIN = str(Path(sys.executable).parent)
# As after `pip install .`: the package's command on PATH.
INSTALLED = {**os.environ, "PATH": os.pathsep.join((VENV_BIN, os.environ["PATH"]))}
# A shell that never had .venv/bin on PATH.
FRESH_SHELL = {
    **os.environ,
    "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != VENV_BIN),
}

CHECK_CONFIG = "pg-health-exporter check-config --config config.yaml"
ONCE = "pg-health-exporter once --config config.yaml"
REPORT = "pg-health-exporter report --config config.yaml"
DAEMON = "pg-health-exporter --config config.yaml"
DSN_DAEMON = (
    'DATA_SOURCE_NAME="postgresql://health_exporter:PASSWORD@db:5432/postgres" pg-health-exporter'
)
MAKE_DEMO = "make demo"
RUN = {CHECK_CONFIG, ONCE, REPORT, DAEMON, DSN_DAEMON, MAKE_DEMO}
NOT_RUN = {
    "make test": "the suite itself",
    "PG_BINDIR=.cache/postgres/15/bin make test": "the suite itself, on another build",
    "make test-majors": "the suite on five more builds; CI runs it (.ci/run)",
    "make test-unit": "part of the suite itself (tests/unit)",
    "make lint": "CI runs it (.ci/run)",
    "make screenshots": "retakes docs/health-page-*.png; test_health_browser takes the same "
    "screenshots",
    "make dashboards": "rewrites dashboards/*.json; test_dashboards checks they are current",
    "make metrics-doc": "rewrites METRICS.md; test_metricsdoc checks it is current",
    "make migration-doc": "rewrites the guide's tables; test_gocompat checks they are current",
    "make bench": "15-40 minutes, and rewrites BENCHMARKS.md",
    "pip install .": "installs into the Python that runs it; this suite runs from .venv, where "
    "make install put the same package",
    "kubectl apply -k deploy/kubernetes/base": "needs a cluster; test_kubernetes renders the "
    "same layout with kubectl kustomize and checks what it holds",
}


def shell_commands() -> list[str]:
    """The commands of the README's ```sh blocks, without their comments."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE):
        for line in block.splitlines():
            command = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if command:
                commands.append(command)
    return commands


def monitoring_role_sql() -> str:
    (sql,) = re.findall(r"^```sql\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)
    return str(sql)


def port_is_free() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", PORT))
        except OSError:
            return False
        return True


class Shell:
    """`bash -c COMMAND` in its own process group (a terminal's Ctrl-C reaches all of it), its
    output collected line by line."""

    def __init__(self, command: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        self._reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def line_with(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)

    def wait_for_line(self, text: str, *, timeout: float) -> str:
        found = wait_for(
            lambda: self.line_with(text) or self.process.poll() is not None,
            timeout=timeout,
            what=f"{text!r} from {self.command!r}",
        )
        assert isinstance(found, str), f"{self.command!r} exited:\n{self.output()}"
        return found

    def interrupt(self, sig: signal.Signals = signal.SIGINT, *, timeout: float = 60) -> int:
        """Send `sig` to the process group (Ctrl-C), wait for the shell to exit."""
        os.killpg(self.process.pid, sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            pytest.fail(f"{self.command!r} did not stop on {sig.name}:\n{self.output()}")
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        """Kill what still runs (after a failure) and release the pipe."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def run(command: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_readme_command_is_run_or_excused() -> None:
    assert set(shell_commands()) == RUN | set(NOT_RUN)


def test_check_config_as_written() -> None:
    # config.yaml of this repository, the annotated default, from the checkout's root.
    result = run(CHECK_CONFIG, cwd=REPO, env=INSTALLED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def your_database(private_postgres: LocalPostgres, tmp_path: Path) -> Iterator[Path]:
    """A server set up as "The monitoring role" says, verbatim, and a directory holding
    config.yaml as a user has it: this repository's, with the target pointed at that server."""
    with psycopg.connect(private_postgres.dsn(), autocommit=True) as conn:
        conn.execute(monitoring_role_sql().encode())
        # After the grants: an application's sequence, created and used later by the role that
        # ran them (DEFAULT PRIVILEGES cover it; GRANT ... ON ALL SEQUENCES alone does not).
        conn.execute("CREATE SEQUENCE created_later")
        conn.execute("SELECT nextval('created_later')")
    text = (REPO / "config.yaml").read_text(encoding="utf-8")
    assert text.count("port=5432") == 1
    (tmp_path / "config.yaml").write_text(
        text.replace("port=5432", f"port={private_postgres.port}")
    )
    yield tmp_path


def test_once_and_report_as_written(your_database: Path) -> None:
    result = run(ONCE, cwd=your_database, env=INSTALLED)
    assert result.returncode == 0, result.stderr
    samples = parse_exposition(result.stdout)
    assert value(samples, "pg_up", target="local") == 1
    # As health_exporter, every collector works (pg_monitor is enough) ...
    failed = {
        dict(labels)["collector"]
        for (name, labels), v in samples.items()
        if name == "pg_exporter_collector_up" and v != 1
    }
    assert not failed, result.stderr
    # ... and the sequence created after the grants is measured.
    used = value(samples, "pg_sequences_used_ratio", datname="postgres", relname="created_later")
    assert used is not None, result.stdout
    assert not value(samples, "pg_sequences_unmeasured", datname="postgres", reason="no_privilege")

    result = run(REPORT, cwd=your_database, env=INSTALLED)
    # Exit code 1 is a critical finding; 2 a configuration error.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "PostgreSQL health report" in result.stdout


def test_daemons_as_written(your_database: Path) -> None:
    assert port_is_free(), f"port {PORT}, which the README's commands use, is taken"
    daemon = Shell(DAEMON, cwd=your_database, env=INSTALLED)
    try:
        wait_for(
            lambda: serving_pg_up(daemon, "local") == 1,
            timeout=60,
            what="pg_up 1 on :9188",
        )
        assert daemon.interrupt(signal.SIGTERM) == 0, daemon.output()
    finally:
        daemon.close()

    # The Go exporter's convention; `db` is the compose stack's host, unknown here: pg_up 0.
    assert port_is_free()
    daemon = Shell(DSN_DAEMON, cwd=your_database, env=INSTALLED)
    try:
        wait_for(
            lambda: serving_pg_up(daemon, "default") is not None,
            timeout=60,
            what="pg_up on :9188",
        )
        assert daemon.interrupt(signal.SIGTERM) == 0, daemon.output()
    finally:
        daemon.close()
    assert "PASSWORD" not in daemon.output()


def serving_pg_up(shell: Shell, target: str) -> float | None:
    if shell.process.poll() is not None:
        pytest.fail(f"{shell.command!r} exited:\n{shell.output()}")
    try:
        return value(scrape(PORT), "pg_up", target=target)
    except OSError:
        return None


def test_make_demo_as_written(tmp_path: Path) -> None:
    assert port_is_free(), f"port {PORT}, which `make demo` uses, is taken"
    demo = Shell(MAKE_DEMO, cwd=REPO, env=FRESH_SHELL)
    try:
        # make demo installs what it needs on first use: allow for pip.
        demo.wait_for_line("press Ctrl-C", timeout=240)
        assert value(scrape(PORT), "pg_up", target="demo") == 1
        # The report command it prints works as printed, from any directory, in a shell that
        # never had .venv/bin on PATH.
        line = demo.line_with("the full report at any time: ")
        assert line is not None, demo.output()
        command = line.split("the full report at any time: ", 1)[1].strip()
        report = run(command, cwd=tmp_path, env=FRESH_SHELL)
        assert report.returncode in (0, 1), report.stdout + report.stderr
        assert "PostgreSQL health report" in report.stdout
        assert "unused index" in report.stdout.lower(), report.stdout
        # Ctrl-C stops everything and removes the temporary database.
        code = demo.interrupt(signal.SIGINT)
    finally:
        demo.close()
    output = demo.output()
    assert "demo: stopped and cleaned up" in output, output
    # make reports the interrupt of its recipe (130, or killed by SIGINT itself).
    assert code in (0, 130, -signal.SIGINT), output
    found = re.search(r"data directory: (\S+)", output)
    assert found, output
    assert not Path(found.group(1)).exists()
    assert port_is_free()
