"""`compat: postgres_exporter`: the Go postgres_exporter's metric names published next to ours.

Derived from a collector run's rendered families when the store takes them: no SQL of its own,
no object per sample. Only the names the mapping (exporter/gocompat/mapping.yaml) gets from
ours by a rename, or a rename and a factor (milliseconds), are published; their TYPE is the Go
exporter's. The labels are ours (`target`, `datname`...) plus their `server` (the target's
`host:port`, as the Go exporter writes it); their `datid` and their other labels are not
published (the guide lists them).
"""

import re
from collections.abc import Mapping as Map
from collections.abc import Sequence

from exporter.config import Config, TargetConfig
from exporter.exposition.render import RenderedFamily, escape_label_value, go_float
from exporter.gocompat import Conversion, Mapping, MetricMapping, load_mapping

_TARGET = re.compile(r'[{,]target="([^"\\]*)"')
# One label as written: a value's quotes and backslashes are escaped.
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class GoNames:
    """Callable: the families of theirs that `families` (ours) give."""

    def __init__(self, mapping: Mapping | None = None, servers: Map[str, str] | None = None):
        self._renames = (mapping or load_mapping()).renames()
        # target name -> the `server` label of its series (`,server="host:port"`).
        self._servers = {
            name: f',server="{escape_label_value(server)}"'
            for name, server in (servers or {}).items()
        }

    def __call__(self, families: Sequence[RenderedFamily]) -> tuple[RenderedFamily, ...]:
        derived: list[RenderedFamily] = []
        for family in families:
            # The sample name (a counter's has _total, its family name not) and its help.
            _, _, sample, help_text = family.header.decode().split("\n", 1)[0].split(" ", 3)
            for theirs, how in self._renames.get(sample, ()):
                derived.append(self._renamed(family, sample, help_text, theirs, how))
        return tuple(derived)

    def _renamed(
        self,
        family: RenderedFamily,
        sample: str,
        help_text: str,
        theirs: MetricMapping,
        how: Conversion,
    ) -> RenderedFamily:
        name = theirs.go
        header = (
            f"# HELP {name} {help_text} (postgres_exporter's name for {sample})\n"
            f"# TYPE {name} {theirs.their_type}\n"
        )
        samples: list[tuple[str, str]] = []
        for line in family.samples.decode().splitlines():
            # name{labels} value: a value never holds a space, a label value may.
            head, _, value = line.rpartition(" ")
            if how.factor != 1.0:
                value = go_float(float(value) * how.factor)
            samples.append((head[len(sample) :], value))
        if how.sum_by is not None:
            samples = _summed(samples, how.sum_by)
        lines = [f"{name}{self._with_server(labels)} {value}\n" for labels, value in samples]
        return RenderedFamily(name, header.encode(), "".join(lines).encode(), len(lines))

    def _with_server(self, labels: str) -> str:
        target = _TARGET.search(labels)
        server = self._servers.get(target.group(1), "") if target else ""
        # Appended: the text format does not ask for sorted labels.
        return labels[:-1] + server + "}" if server else labels


def _summed(samples: list[tuple[str, str]], by: tuple[str, ...]) -> list[tuple[str, str]]:
    """The samples summed over every label but `by` (as PromQL's `sum by`); label values are
    kept as written, escapes and all."""
    sums: dict[tuple[str, ...], float] = {}
    for labels, value in samples:
        pairs = dict(_PAIR.findall(labels))
        key = tuple(pairs.get(label, "") for label in by)
        sums[key] = sums.get(key, 0.0) + float(value)
    return [
        ("{" + ",".join(f'{n}="{v}"' for n, v in zip(by, key, strict=True) if v) + "}", go_float(s))
        for key, s in sums.items()
    ]


def derive_for(config: Config) -> GoNames | None:
    """What the store derives for config.yaml's `compat`: nothing, or the Go exporter's names."""
    if config.compat != "postgres_exporter":
        return None
    return GoNames(servers={t.name: server_label(t) for t in config.targets})


def server_label(target: TargetConfig) -> str:
    """`host:port` of the DSN, as the Go exporter labels its series (`server`): libpq's
    defaults where the DSN has none. No user, no password."""
    params = target.dsn_params
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}"
