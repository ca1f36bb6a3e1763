"""Files holding a password that other users of the machine can read.

The config file (or a target file) counts when a target's password is written in it (in a DSN
or as `password:`), not when it only names `${ENV}`; a password_file always does.
"""

import re
import stat
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from exporter.config import Config, read_yaml
from exporter.errors import ConfigError
from exporter.targets.files import target_paths

_OTHERS_MAY_READ = stat.S_IRGRP | stat.S_IROTH
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def exposed_secret_files(config: Config, config_path: Path | None) -> list[tuple[Path, int]]:
    """(path, permission bits) of each file holding a password that group or others may read."""
    found: list[tuple[Path, int]] = []
    if config_path is not None and _holds_secret(config_path):
        found += _if_readable_by_others(config_path)
    for target_file in target_paths(config):  # entries written with their password
        if _holds_secret(target_file):
            found += _if_readable_by_others(target_file)
    files = [t.password_file for t in config.targets]
    files += [m.password_file for m in config.auth_modules.values()]
    for file in files:
        if file is not None:
            found += _if_readable_by_others(file)
    return found


def _holds_secret(path: Path) -> bool:
    """Whether the file as written (before `${ENV}` is filled in) carries a password."""
    try:
        raw = read_yaml(path)
    except ConfigError:
        return False
    # config.yaml's `targets:`, or a target file's list (or its own `targets:`).
    targets = (
        raw if isinstance(raw, list) else raw.get("targets") if isinstance(raw, dict) else None
    )
    modules = raw.get("auth_modules") if isinstance(raw, dict) else None
    if isinstance(modules, dict) and any(
        isinstance(m, dict) and _literal(m.get("password")) for m in modules.values()
    ):
        return True
    for target in targets if isinstance(targets, list) else []:
        if not isinstance(target, dict):
            continue
        if _literal(target.get("password")):
            return True
        dsn = target.get("dsn")
        if isinstance(dsn, str):
            try:
                params = conninfo_to_dict(dsn)
            except psycopg.ProgrammingError:
                return "password" in dsn  # unparsable as written: assume the worst
            if any(k.endswith("password") and _literal(v) for k, v in params.items()):
                return True
    return False


def _literal(value: object) -> bool:
    """A value that is more than `${ENV}` references."""
    return isinstance(value, str) and bool(_ENV_REFERENCE.sub("", value).strip())


def _if_readable_by_others(path: Path) -> list[tuple[Path, int]]:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []
    return [(path, mode)] if mode & _OTHERS_MAY_READ else []
