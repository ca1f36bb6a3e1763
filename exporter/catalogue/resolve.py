"""The catalogue a config asks for: built-ins with their overrides, then the user's own.

`resolve` is the one place a collector is validated: the format (pydantic), metric and label
names, its SQL, and names clashing between collectors. Every problem comes back at once, as
`collectors.NAME.path: message`.
"""

import difflib
import functools
import re
from importlib import resources
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from exporter.catalogue.lint import check_metric_names, name_clashes, sql_problems
from exporter.catalogue.spec import NAME_PATTERN, Collector, CollectorOverride, CollectorSpec
from exporter.errors import validation_problems
from exporter.units import SECONDS_ALLOWED

# libyaml's parser when PyYAML has it (its wheels do): the built-in files parse in 30 ms instead
# of 400, which is most of the exporter's start before its first connection.
_FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def builtin_specs() -> dict[str, CollectorSpec]:
    """The built-in catalogue, read from the package's catalogue/builtin/*.yaml."""
    return dict(_read_builtin_specs())


@functools.cache
def _read_builtin_specs() -> dict[str, CollectorSpec]:
    # Read once per process: the files ship with the package, and the specs are frozen.
    specs: dict[str, CollectorSpec] = {}
    folder = resources.files("exporter.catalogue") / "builtin"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            name = entry.name.removesuffix(".yaml")
            document = yaml.load(entry.read_text(), Loader=_FAST_YAML_LOADER)
            specs[name] = CollectorSpec.model_validate(document)
    return specs


def apply_override(spec: CollectorSpec, override: CollectorOverride) -> CollectorSpec:
    """A built-in with config.yaml's changes, validated again (e.g. timeout <= interval)."""
    changes = override.model_dump(exclude_none=True)
    unknown = sorted(set(changes.get("params", {})) - set(spec.params))
    if unknown:
        raise ValueError(f"params: no such param(s): {', '.join(unknown)}")
    changes["params"] = {**spec.params, **changes.get("params", {})}
    # The dump holds float seconds, validated once already.
    return CollectorSpec.model_validate({**spec.model_dump(), **changes}, context=SECONDS_ALLOWED)


def _looks_like_override(body: Any) -> bool:
    """A body that changes a collector (interval, enabled...) rather than defining one."""
    return body is None or (isinstance(body, dict) and not {"help", "queries"} & set(body))


def _not_builtin(name: str, builtins: dict[str, CollectorSpec]) -> str:
    close = difflib.get_close_matches(name, builtins, n=1, cutoff=0.6)
    if close:
        return f"no built-in collector named {name} (did you mean {close[0]}?)"
    return f"no built-in collector named {name}; a custom collector needs `help` and `queries`"


def resolve(raw: dict[str, Any]) -> tuple[list[Collector], list[str]]:
    """The collectors config.yaml's `collectors:` section makes, and every problem with them."""
    problems: list[str] = []
    builtins = builtin_specs()
    collectors: list[Collector] = []
    for name, spec in builtins.items():
        try:
            if name in raw:
                override = TypeAdapter(CollectorOverride).validate_python(raw[name] or {})
                spec = apply_override(spec, override)  # noqa: PLW2901 (the overridden spec)
            collectors.append(Collector(name=name, spec=spec, builtin=True))
        except ValidationError as exc:
            problems.extend(validation_problems(exc, f"collectors.{name}.", CollectorOverride))
        except ValueError as exc:
            problems.append(f"collectors.{name}.{exc}")
    for name, body in raw.items():
        if name in builtins:
            continue
        if not re.match(NAME_PATTERN, name):
            problems.append(f"collectors.{name}: names are lower_snake_case")
            continue
        if _looks_like_override(body):
            problems.append(f"collectors.{name}: {_not_builtin(name, builtins)}")
            continue
        try:
            spec = TypeAdapter(CollectorSpec).validate_python(body)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, f"collectors.{name}.", CollectorSpec))
            continue
        collectors.append(Collector(name=name, spec=spec, builtin=False))
    for collector in collectors:
        problems.extend(f"collectors.{collector.name}.{p}" for p in check_metric_names(collector))
        problems.extend(f"collectors.{collector.name}.{p}" for p in sql_problems(collector))
    problems.extend(name_clashes(collectors))
    return collectors, problems
