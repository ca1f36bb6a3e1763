"""`compat: postgres_exporter`: the Go postgres_exporter's metric names published next to ours.

Derived from a collector run's rendered families when the store takes them: no SQL of its own,
no object per sample. Only the names the mapping (exporter/gocompat/mapping.yaml) gets from
ours by a rename, or a rename and a factor (milliseconds), are published; their TYPE is the Go
exporter's. The labels are ours (`target`, `datname`...), not theirs (`server`, `datid`).
"""

from collections.abc import Sequence

from exporter.exposition.render import RenderedFamily, go_float
from exporter.gocompat import Mapping, MetricMapping, load_mapping


class GoNames:
    """Callable: the families of theirs that `families` (ours) give."""

    def __init__(self, mapping: Mapping | None = None) -> None:
        self._renames = (mapping or load_mapping()).renames()

    def __call__(self, families: Sequence[RenderedFamily]) -> tuple[RenderedFamily, ...]:
        derived: list[RenderedFamily] = []
        for family in families:
            # The sample name (a counter's has _total, its family name not) and its help.
            _, _, sample, help_text = family.header.decode().split("\n", 1)[0].split(" ", 3)
            for theirs, factor in self._renames.get(sample, ()):
                derived.append(_renamed(family, sample, help_text, theirs, factor))
        return tuple(derived)


def _renamed(
    family: RenderedFamily, sample: str, help_text: str, theirs: MetricMapping, factor: float
) -> RenderedFamily:
    name = theirs.go
    header = (
        f"# HELP {name} {help_text} (postgres_exporter's name for {sample})\n"
        f"# TYPE {name} {theirs.their_type}\n"
    )
    lines = []
    for line in family.samples.decode().splitlines():
        # name{labels} value: a value never holds a space, a label value may.
        head, _, value = line.rpartition(" ")
        if factor != 1.0:
            value = go_float(float(value) * factor)
        lines.append(f"{name}{head[len(sample) :]} {value}\n")
    return RenderedFamily(name, header.encode(), "".join(lines).encode(), len(lines))


def derive_for(compat: str) -> GoNames | None:
    """What the store derives for config.yaml's `compat`: nothing, or the Go exporter's names."""
    return GoNames() if compat == "postgres_exporter" else None
