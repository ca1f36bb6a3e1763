"""Targets kept in files (`target_files.paths`), added to the config's as it is loaded.

Two formats, told apart per entry, in YAML or JSON:

- our own: a list of target entries, the keys of `targets[]` in config.yaml (or a mapping
  with such a `targets:` list); `${ENV}` and `password_file` work as there;
- Prometheus file_sd: a list of `{targets: ["host:port[/db]", ...], labels: {...}}` groups;
  each address becomes a target named by it, logged in to with the auth module its
  `auth_module` (or `__param_auth_module`) label names, else `default`. Other labels are
  not used: every series carries `target`.

A file's problems are named by its path and the entry (`/etc/.../a.yaml: 0.dsn: ...`), and,
like any config problem, reject the whole load: a reload keeps the running targets.

`Fingerprint` tells that the files changed (names, sizes, modification times), so the daemon
can reload without a signal.
"""

import glob
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporter.config import (
    Config,
    TargetConfig,
    interpolate,
    read_yaml,
    with_password_file,
)
from exporter.errors import ConfigError, ProbeRefused, validation_problems
from exporter.targets.probeaddress import DEFAULT_MODULE, parse_address

_MODULE_LABELS = ("auth_module", "__param_auth_module")


def target_paths(config: Config) -> list[Path]:
    """The files the patterns match now, each once, in order."""
    found: dict[str, None] = {}
    for pattern in config.target_files.paths:
        for name in sorted(glob.glob(os.path.expanduser(pattern))):
            if os.path.isfile(name):
                found.setdefault(name)
    return [Path(name) for name in found]


def with_target_files(config: Config) -> Config:
    """The config with the targets its files hold now; ConfigError naming every problem."""
    if not config.target_files.paths:
        return config
    problems: list[str] = []
    targets = list(config.targets)
    for path in target_paths(config):
        try:
            document = read_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        targets.extend(_targets_in(document, path, config, problems))
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(
            f"target_files: target name(s) given twice (in the config or the files): "
            f"{', '.join(duplicates)}"
        )
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"targets": tuple(targets)})


def _targets_in(
    document: Any, path: Path, config: Config, problems: list[str]
) -> list[TargetConfig]:
    if isinstance(document, dict) and set(document) == {"targets"}:
        document = document["targets"]
    if document is None:
        return []  # an empty file: no targets
    if not isinstance(document, list):
        problems.append(f"{path}: expected a list of targets or of file_sd groups")
        return []
    found: list[TargetConfig] = []
    for index, raw in enumerate(document):
        where = f"{path}: {index}"
        entry = interpolate(raw, where, problems)
        if isinstance(entry, dict) and isinstance(entry.get("targets"), list):
            found.extend(_file_sd_group(entry, where, config, problems))
            continue
        try:
            target = TargetConfig.model_validate(entry)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, f"{where}.", TargetConfig))
            continue
        found.append(with_password_file(target, where, problems))
    return found


def _file_sd_group(
    group: dict[str, Any], where: str, config: Config, problems: list[str]
) -> list[TargetConfig]:
    labels = group.get("labels") or {}
    if not isinstance(labels, dict):
        problems.append(f"{where}.labels: expected a mapping of label names to values")
        return []
    chosen = next((str(labels[k]) for k in _MODULE_LABELS if k in labels), DEFAULT_MODULE)
    module = config.auth_modules.get(chosen)
    if module is None:
        known = ", ".join(sorted(config.auth_modules)) or "none"
        problems.append(f"{where}.labels: no auth module {chosen!r} in auth_modules ({known})")
        return []
    found: list[TargetConfig] = []
    for position, address in enumerate(group["targets"]):
        try:
            parsed = parse_address(str(address))
            found.append(module.target(str(address), parsed.host, parsed.port, parsed.dbname))
        except ProbeRefused as exc:
            problems.append(f"{where}.targets.{position}: {exc}")
        except ValidationError as exc:
            problems.extend(validation_problems(exc, f"{where}.targets.{position}."))
    return found


class Fingerprint:
    """Whether the target files changed since last asked: their names, sizes and mtimes."""

    def __init__(self, config: Config) -> None:
        self._last = _fingerprint(config)

    def changed(self, config: Config) -> bool:
        now = _fingerprint(config)
        changed, self._last = now != self._last, now
        return changed


def _fingerprint(config: Config) -> tuple[tuple[str, int, int], ...]:
    found = []
    for path in target_paths(config):
        try:
            stat = path.stat()
        except OSError:
            continue  # gone meanwhile: the next look sees it gone
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)
