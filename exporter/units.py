"""Value types shared by the configuration and the collector catalogue."""

import errno
import re
import socket
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# Validation context under which a Duration may be float seconds: a spec already validated,
# dumped and validated again with changes (`catalogue.resolve.apply_override`).
SECONDS_ALLOWED = {"durations": "seconds"}


def parse_duration(value: Any) -> float:
    """Seconds from `15s`, `500ms`, `5m`, `1h` or `1d`. A bare number is refused: is
    `interval: 15000` 15,000 seconds or 15 seconds in milliseconds?"""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15s, 5m or 500ms")
    if isinstance(value, int | float) or (
        isinstance(value, str) and (match := _DURATION.match(value)) and not match.group(2)
    ):
        raise ValueError(_no_unit(value))
    if isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    else:
        raise ValueError("expected a duration such as 15s, 5m or 500ms")
    return _at_least_a_millisecond(seconds)


def _no_unit(value: Any) -> str:
    number = str(value).strip()
    as_ms = f"{number}ms"
    try:
        seconds = float(number) / 1000
        if seconds >= 1 and format_duration(seconds) != as_ms:
            as_ms = f"{format_duration(seconds)}` (`{number}ms`)"
        else:
            as_ms += "`"
    except ValueError:
        as_ms += "`"
    return f"{number} has no unit: write `{as_ms} for milliseconds or `{number}s` for seconds"


def _at_least_a_millisecond(seconds: float) -> float:
    if seconds < 0.001:
        # Timeouts are passed to PostgreSQL in whole milliseconds, where 0 means "no timeout".
        raise ValueError("a duration must be at least 1ms")
    return seconds


def _duration(value: Any, info: ValidationInfo) -> float:
    if (
        isinstance(value, float)
        and isinstance(info.context, dict)
        and info.context.get("durations") == "seconds"
    ):
        return _at_least_a_millisecond(value)
    return parse_duration(value)


# Durations are stored as float seconds; the config spells them `15s`, `5m` or `500ms`.
Duration = Annotated[float, BeforeValidator(_duration)]


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _off(value: Any) -> bool:
    """Whether a setting says `off`: YAML reads a bare `off` as false."""
    return (
        value is None
        or value is False
        or (isinstance(value, str) and value.strip().lower() == "off")
    )


def parse_budget(value: Any) -> float | None:
    """Seconds of database time per second from `300ms` (per minute) or `0.5%` (of one core);
    None for `off`."""
    if _off(value):
        return None
    if isinstance(value, str) and (match := _PERCENT.match(value)):
        share = float(match.group(1)) / 100
    elif isinstance(value, str):
        try:
            share = parse_duration(value) / 60.0
        except ValueError:
            raise ValueError(
                "expected database time per minute (300ms, 2s), a share of one core (0.5%) or off"
            ) from None
    else:
        raise ValueError(
            "expected database time per minute (300ms, 2s), a share of one core (0.5%) or off"
        )
    if not 0 < share <= 1:
        raise ValueError("a budget is more than nothing and at most one core (100%)")
    return share


# Database time per second; None is no budget. The config spells it per minute or in percent.
Budget = Annotated[float | None, BeforeValidator(parse_budget)]


def parse_rate(value: Any) -> float | None:
    """A number of times a minute, more than none (`5`, or `"5"` as `${ENV}` gives it); None
    for `off`."""
    if _off(value):
        return None
    problem = "expected a number of times a minute, more than 0, or off"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(problem)
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(problem) from None
    if not rate > 0:
        raise ValueError(problem)
    return rate


# Times a minute; None is no limit.
PerMinute = Annotated[float | None, BeforeValidator(parse_rate)]


def format_duration(seconds: float) -> str:
    """The shortest spelling of a duration, for docs and the landing page."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{_milliseconds(seconds)}ms"


def human_milliseconds(seconds: float) -> str:
    """A duration in milliseconds for people (`12 ms`, `0.4 ms`): a real, non-zero duration
    never shows as `0 ms`."""
    return f"{_milliseconds(seconds)} ms"


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1000
    if ms <= 0:
        return "0"
    if ms < 0.05:
        return "<0.1"
    if ms < 0.95:
        return f"{ms:.1f}"
    return f"{round(ms)}"


def format_server_version(version_num: int) -> str:
    """`server_version_num` as people write it: 180006 is 18.6, 90624 is 9.6.24."""
    major = version_num // 10000
    if major >= 10:
        return f"{major}.{version_num % 10000}"
    return f"{major}.{version_num // 100 % 100}.{version_num % 100}"


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9188`, `0.0.0.0:9188`, `localhost:9188` or `[::1]:9188` as (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. :9188 or 127.0.0.1:9188)")
    return host.strip("[]"), int(port_text)


_BIND_REASONS = {
    errno.EADDRINUSE: "the address is already in use (another exporter, or another program?)",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


def check_listen_address(address: str) -> None:
    """Raise ValueError, in one line naming the address and why, unless something could listen
    on `address` now. Called before anything else starts, so a busy port fails at once."""
    host, port = parse_listen_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the HTTP server binds: a port left in TIME_WAIT is free, one listened on is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except socket.gaierror as exc:
        reason = f"unknown host {host!r} ({exc.strerror})"
        raise ValueError(f"cannot listen on {address}: {reason}") from None
    except OSError as exc:
        reason = _BIND_REASONS.get(exc.errno or 0, exc.strerror or str(exc))
        raise ValueError(f"cannot listen on {address}: {reason}") from None
