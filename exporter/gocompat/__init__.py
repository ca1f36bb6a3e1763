"""The Go postgres_exporter's metric names and flags, and ours: mapping.yaml, loaded."""

from exporter.gocompat.mapping import (
    CollectorMapping,
    Conversion,
    FlagMapping,
    Mapping,
    MetricMapping,
    load_mapping,
)

__all__ = [
    "CollectorMapping",
    "Conversion",
    "FlagMapping",
    "Mapping",
    "MetricMapping",
    "load_mapping",
]
