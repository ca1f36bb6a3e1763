"""Every failure the exporter reports on purpose, under one base class.

Each says what happened in words a user can act on; none repeats a password. Defects are
ordinary exceptions and are logged with their traceback instead.
"""

from pydantic import ValidationError


class ExporterError(Exception):
    """A failure the exporter expects and reports: configuration, connection or collection."""


class ConfigError(ExporterError):
    """The configuration is unusable; `problems` lists each as `path.to.key: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ConnectFailed(ExporterError):
    """The target could not be connected to: it is down, unreachable or refuses us."""


class PoolBusy(ExporterError):
    """The target is reachable, but every connection was in use for the whole wait."""


class CollectorUnavailable(ExporterError):
    """The collector cannot run here (version, extension, privilege); not an error to retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CollectorFailed(ExporterError):
    """The collector ran but its result cannot be published."""


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only: libpq adds hints on further lines."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def validation_problems(error: ValidationError, prefix: str = "") -> list[str]:
    """pydantic's errors as `path.to.key: message`; `prefix` (ending in a dot) places them."""
    problems = []
    for item in error.errors():
        where = prefix + ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where.rstrip('.') or '(top level)'}: {message}")
    return problems
