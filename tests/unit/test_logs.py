"""Log lines: logfmt and JSON, one event per line, secrets masked."""

import json
import logging
import subprocess
import sys

import pytest

from exporter.logs import JsonFormatter, LogfmtFormatter, RedactingFilter

pytestmark = pytest.mark.any_major


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "exporter.test", "levelname": "WARNING", "msg": msg})
    record.__dict__.update(extra)
    return record


def test_logfmt_quotes_values_with_spaces() -> None:
    line = LogfmtFormatter().format(_record("target is down", target="db 1", error='say "x"'))
    assert 'msg="target is down"' in line
    assert 'target="db 1"' in line
    assert r'error="say \"x\""' in line
    assert "level=warning" in line


def test_json_lines() -> None:
    event = json.loads(JsonFormatter().format(_record("collector failed", collector="database")))
    assert event["msg"] == "collector failed"
    assert event["collector"] == "database"
    assert event["level"] == "warning"


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_known_secrets_are_masked(formatter: logging.Formatter) -> None:
    record = _record("failed with password=%s", error="token Sup3rSecret here")
    record.args = ("Sup3rSecret",)
    assert RedactingFilter(["Sup3rSecret"]).filter(record)
    line = formatter.format(record)
    assert "Sup3rSecret" not in line
    assert "****" in line


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_secrets_in_tracebacks_are_masked(formatter: logging.Formatter) -> None:
    try:
        raise RuntimeError("could not use password=Sup3rSecret")
    except RuntimeError:
        record = _record("collector crashed")
        record.exc_info = sys.exc_info()
    assert RedactingFilter(["Sup3rSecret"]).filter(record)
    line = formatter.format(record)
    assert "Sup3rSecret" not in line
    assert "RuntimeError: could not use password=****" in line.replace("\\n", "\n")


def test_warnings_and_uncaught_exceptions_go_through_the_log() -> None:
    """What Python would print to stderr by itself comes out as log lines in the format."""
    program = (
        "import threading, warnings\n"
        "from exporter.logs import setup\n"
        "setup('info', 'json')\n"
        "warnings.warn('a warning')\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='worker')\n"
        "thread.start()\n"
        "thread.join()\n"
        "raise RuntimeError('boom')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["msg"] for e in events[1:]] == [
        "uncaught exception in a thread",
        "uncaught exception",
    ], result.stderr
    assert "UserWarning: a warning" in events[0]["msg"]
    assert "ZeroDivisionError" in events[1]["exc"]
    assert events[1]["in_thread"] == "worker"
    assert "RuntimeError: boom" in events[2]["exc"]
