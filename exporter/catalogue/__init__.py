"""The collectors as data: the format (spec), its validation (lint) and the catalogue a config
asks for (resolve). Built-in collectors are builtin/*.yaml."""

from exporter.catalogue.lint import family_names
from exporter.catalogue.resolve import builtin_specs, resolve
from exporter.catalogue.spec import (
    RESERVED_LABELS,
    Branch,
    Collector,
    CollectorOverride,
    CollectorSpec,
    Column,
    Limit,
    Query,
    Requirements,
    Usage,
)

__all__ = [
    "RESERVED_LABELS",
    "Branch",
    "Collector",
    "CollectorOverride",
    "CollectorSpec",
    "Column",
    "Limit",
    "Query",
    "Requirements",
    "Usage",
    "builtin_specs",
    "family_names",
    "resolve",
]
