"""The exposition text read back as samples, so a report judges exactly what /metrics serves."""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


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

    @classmethod
    def parse(cls, text: str) -> "Samples":
        return cls(
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        )

    def __iter__(self) -> Iterator[Sample]:
        for samples in self._by_name.values():
            yield from samples

    def all(self, name: str, **labels: str) -> list[Sample]:
        """Every sample of `name` whose labels include `labels`."""
        return [
            s
            for s in self._by_name.get(name, [])
            if all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the first sample of `name` with these labels, None if there is none."""
        found = self.all(name, **labels)
        return found[0].value if found else None

    def where(self, **labels: str) -> "Samples":
        """Only the samples with these labels, e.g. one target's."""
        return Samples(s for s in self if all(s.labels.get(k) == v for k, v in labels.items()))
