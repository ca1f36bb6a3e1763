"""Log output in logfmt (the Prometheus ecosystem's default) or JSON, one event per line.

Everything the process would otherwise print to stderr goes through the same handler, so every
line is in the chosen format: Python warnings, and exceptions nobody caught (on the main
thread or any other; the HTTP server logs its own, see web/server.py).
"""

import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is printed.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
    if record.exc_info:
        # exc_text when RedactingFilter has already formatted (and masked) it.
        fields["exc"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class SecretMasker:
    """Replaces known secrets in text with ****: for log lines and for error messages."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: list[str] = []
        self.add(secrets or [])

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    def add(self, secrets: list[str]) -> None:
        # Old secrets stay masked too: a message about the previous config may still come.
        # Longest first, so a password containing a shorter one is masked whole.
        known = set(self._secrets) | {s for s in secrets if s}
        self._secrets = sorted(known, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """Masks known secrets anywhere in a log line: the last line of defence for passwords."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.masker = SecretMasker(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.masker:
            mask = self.masker.mask
            record.msg = mask(record.getMessage())
            record.args = None
            for key, value in list(record.__dict__.items()):
                if key not in _STANDARD and isinstance(value, str):
                    setattr(record, key, mask(value))
            if record.exc_info:  # an exception's message may quote what it failed on
                record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return True


def add_secrets(secrets: list[str]) -> None:
    """Mask these too from now on (a reloaded config's passwords)."""
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            if isinstance(found, RedactingFilter):
                found.masker.add(secrets)


def setup(level: str, fmt: str, secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RedactingFilter(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The exporter logs a target's failures once, itself; APScheduler would log each job
    # start or each run skipped because the previous one overran
    # (pg_exporter_collector_duration_seconds shows that), every interval.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("exporter").critical("uncaught exception", exc_info=(kind, exc, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    logging.getLogger("exporter").error(
        "uncaught exception in a thread",
        extra={"in_thread": args.thread.name if args.thread else ""},
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
