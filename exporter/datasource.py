"""The target the environment defines, read as the Go postgres_exporter reads it.

`DATA_SOURCE_NAME` (a libpq connection string or URI) wins. Without it, `DATA_SOURCE_URI`
(`host:port/dbname?options`, or its `_FILE`) with `DATA_SOURCE_USER` and `DATA_SOURCE_PASS`
(or their `_FILE`s; a file wins over the variable, as in the Go exporter) make one. The
target is named `default` and is used when the config names no targets: no `--config`, or a
config file without targets (tuning collectors for a target the deployment defines).

Problems name the variable, not the `targets.0.dsn` the user never wrote. The password is never
put into a URI: it becomes the target's `password` (or `password_file`, read, rotated on reload
and checked for its permissions like any other), so it is masked like every other password.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from exporter.config import Config, parse_config, read_yaml, why_unreadable
from exporter.errors import ConfigError

TARGET_NAME = "default"
NONE_FOUND = (
    "(top level): no configuration: pass --config FILE, or set DATA_SOURCE_NAME "
    "(or DATA_SOURCE_URI, with DATA_SOURCE_USER and DATA_SOURCE_PASS)"
)
# A scheme the Go exporter would have choked on; tolerated, since the intent is plain.
_SCHEME = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """The config file (or none) with the environment's target when it names no targets."""
    env = os.environ if environ is None else environ
    raw = (read_yaml(path) if path is not None else None) or {}
    # The environment is read only when it is needed: with targets in the file, a stale
    # DATA_SOURCE_PASS_FILE left in a unit file is no error.
    names_targets = not isinstance(raw, dict) or bool(raw.get("targets"))
    found = None if names_targets else environment_target(env)
    if found is None:
        if path is None:
            raise ConfigError([NONE_FOUND])
        return parse_config(raw)
    target, sources = found
    try:
        return parse_config(raw, default_targets=[target])
    except ConfigError as exc:
        raise ConfigError([_renamed(p, sources) for p in exc.problems]) from None


def environment_target(
    env: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The raw target and, for each of its keys, the variable it came from; None when the
    environment names no server. ConfigError when a `_FILE` cannot be read."""
    dsn = env.get("DATA_SOURCE_NAME")
    if dsn:
        return {"name": TARGET_NAME, "dsn": dsn}, {"dsn": "DATA_SOURCE_NAME"}
    problems: list[str] = []
    uri, uri_from = _value(env, "DATA_SOURCE_URI", problems)
    user, _ = _value(env, "DATA_SOURCE_USER", problems)
    if problems:
        raise ConfigError(problems)
    if not uri:
        return None
    userinfo = quote(user, safe="") + "@" if user else ""
    target: dict[str, Any] = {
        "name": TARGET_NAME,
        "dsn": "postgresql://" + userinfo + _SCHEME.sub("", uri),
    }
    sources = {"dsn": uri_from}
    if env.get("DATA_SOURCE_PASS_FILE"):
        target["password_file"] = env["DATA_SOURCE_PASS_FILE"]
        sources["password_file"] = "DATA_SOURCE_PASS_FILE"
    elif env.get("DATA_SOURCE_PASS"):
        target["password"] = env["DATA_SOURCE_PASS"]
        sources["password"] = "DATA_SOURCE_PASS"
    return target, sources


def _value(env: Mapping[str, str], name: str, problems: list[str]) -> tuple[str, str]:
    """`name`'s value, or its `_FILE`'s contents (trimmed, as the Go exporter does), and which
    of the two it came from."""
    file = env.get(f"{name}_FILE")
    if not file:
        return env.get(name, ""), name
    try:
        return Path(file).read_text().strip(), f"{name}_FILE"
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{name}_FILE: cannot read {file}: {why_unreadable(exc)}")
        return "", f"{name}_FILE"


def _renamed(problem: str, sources: dict[str, str]) -> str:
    """`targets.0.dsn: ...` as `DATA_SOURCE_URI: ...`: the key the user actually set."""
    for key, variable in sources.items():
        prefix = f"targets.0.{key}:"
        if problem.startswith(prefix):
            return f"{variable}:{problem.removeprefix(prefix)}"
    return problem
