"""Every failure the exporter reports on purpose, under one base class.

Each says what happened in words a user can act on; none repeats a password. Defects are
ordinary exceptions and are logged with their traceback instead.
"""

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


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


class ProbeRefused(ExporterError):
    """A `/probe` request that cannot be served: `status` is its HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only: libpq adds hints on further lines."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def validation_problems(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """pydantic's errors as `path.to.key: message`; `prefix` (ending in a dot) places them.
    With the `model` validated, an unknown key comes with the closest valid key at its path."""
    problems = []
    for item in error.errors():
        where = prefix + ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and model is not None and item["loc"]:
            message += _did_you_mean(str(item["loc"][-1]), _keys_at(model, item["loc"][:-1]))
        problems.append(f"{where.rstrip('.') or '(top level)'}: {message}")
    return problems


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _keys_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The keys the model accepts at `path` (a pydantic error's location): its field names."""
    annotation: Any = model
    for part in path:
        annotation = _step(annotation, part)
    found = _model_in(annotation)
    if found is None:
        return []
    return [field.alias or name for name, field in found.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (through Annotated and Optional), if one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in _union_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return (typing.get_args(annotation)[0],)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return ()


def _step(annotation: Any, part: int | str) -> Any:
    """The annotation one step into `annotation` along a location part (field, index, key)."""
    model = _model_in(annotation)
    if model is not None and isinstance(part, str) and part in model.model_fields:
        return model.model_fields[part].annotation
    for arg in (annotation, *_union_args(annotation)):
        origin = typing.get_origin(arg)
        args = typing.get_args(arg)
        if origin in (tuple, list, set, frozenset) and isinstance(part, int) and args:
            return args[0]
        if origin is dict and len(args) == 2:
            return args[1]
    for arg in _union_args(annotation):  # pydantic names the union member it tried
        if getattr(arg, "__name__", None) == part:
            return arg
    return None
