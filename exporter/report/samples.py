"""The exposition text read back as samples, so a report judges exactly what /metrics serves.

The daemon's health page judges the whole body after every change of the store, so reading it
back is kept cheap: the lines the exporter writes itself (prometheus_client's text format:
`name{label="value",...} value`) are read with two regular expressions, several times faster
than prometheus_client's general parser, which still reads any text with a line they do not
match. Lookups by labels are indexed, so a check that looks up a metric per object stays linear.
"""

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# A sample line as generate_latest writes it; the braces hold every label (a value may contain
# "}": the greedy group ends at the last one before the value).
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_PAIR = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"'
_LABEL = re.compile(_PAIR)
_LABELS = re.compile(rf"{_PAIR}(?:,{_PAIR})*,?")
# The escapes generate_latest writes in a label value (others stay as they are, as
# prometheus_client's parser leaves them).
_ESCAPE = re.compile(r'\\([\\n"])')
_UNESCAPED = {"n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str  # as exposed, counters with their _total
    labels: Mapping[str, str]
    value: float

    def __getitem__(self, label: str) -> str:
        """A label's value ("" when the sample has no such label, as in PromQL)."""
        return self.labels.get(label, "")


class Samples:
    """Samples by metric name, with label filters."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self._by_name: dict[str, list[Sample]] = {}
        for sample in samples:
            self._by_name.setdefault(sample.name, []).append(sample)
        # (name, label names) -> label values -> samples; built on the first such lookup.
        self._indexes: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], list[Sample]]] = {}

    @classmethod
    def parse(cls, text: str) -> "Samples":
        samples = _parse_own(text)
        if samples is None:  # not only what the exporter writes: the general parser
            # Imported here: the daemon's health page reads only its own text, and leaves
            # prometheus_client (3 MB) unloaded.
            from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

            samples = [
                Sample(s.name, dict(s.labels), s.value)
                for family in text_string_to_metric_families(text)
                for s in family.samples
            ]
        return cls(samples)

    def __iter__(self) -> Iterator[Sample]:
        for samples in self._by_name.values():
            yield from samples

    def all(self, name: str, **labels: str) -> list[Sample]:
        """Every sample of `name` whose labels include `labels`."""
        if not labels:
            return list(self._by_name.get(name, []))
        keys = tuple(sorted(labels))
        index = self._indexes.get((name, keys))
        if index is None:
            index = {}
            for s in self._by_name.get(name, []):
                if all(k in s.labels for k in keys):
                    index.setdefault(tuple(s.labels[k] for k in keys), []).append(s)
            self._indexes[(name, keys)] = index
        return list(index.get(tuple(labels[k] for k in keys), []))

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the first sample of `name` with these labels, None if there is none."""
        found = self.all(name, **labels)
        return found[0].value if found else None

    def where(self, **labels: str) -> "Samples":
        """Only the samples with these labels, e.g. one target's."""
        return Samples(s for s in self if all(s.labels.get(k) == v for k, v in labels.items()))


def _parse_own(text: str) -> list[Sample] | None:
    """The samples of exposition text as generate_latest writes it; None for any other text."""
    samples = []
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            return None
        name, inside, value = match.groups()
        labels: dict[str, str] = {}
        if inside:
            if _LABELS.fullmatch(inside) is None:
                return None
            labels = dict(_LABEL.findall(inside))
            if "\\" in inside:
                labels = {k: _ESCAPE.sub(_unescape, v) for k, v in labels.items()}
        try:
            samples.append(Sample(name, labels, float(value)))
        except ValueError:
            return None
    return samples


def _unescape(match: re.Match[str]) -> str:
    return _UNESCAPED.get(match.group(1), match.group(1))
