"""Rendering metric families to Prometheus text exposition, once per poll."""

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from exporter.gzipjoin import deflate_piece


@dataclass(frozen=True)
class RenderedFamily:
    """One family's exposition text, split so families from several parts can be merged.

    The text format allows one HELP/TYPE header per family name, so the store writes `header`
    once and then the `samples` of every part (target, collector, database) that has the family.
    """

    name: str
    header: bytes
    samples: bytes
    series: int
    # The same two texts compressed ahead of time (see gzipjoin.py), by the job, not the scrape.
    header_z: bytes
    samples_z: bytes


class _OneShot:
    """The registry interface generate_latest() expects, over a fixed list of families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> tuple[RenderedFamily, ...]:
    """Render families, merging any that share a name (e.g. one query per database)."""
    merged: dict[str, Metric] = {}
    for family in families:
        if family.name in merged:
            merged[family.name].samples.extend(family.samples)
        else:
            merged[family.name] = family
    rendered = []
    for family in merged.values():
        text = generate_latest(_OneShot([family]))
        # generate_latest writes exactly two header lines: # HELP, then # TYPE.
        split_at = text.index(b"\n", text.index(b"\n") + 1) + 1
        header, samples = text[:split_at], text[split_at:]
        rendered.append(
            RenderedFamily(
                name=family.name,
                header=header,
                samples=samples,
                series=len(family.samples),
                header_z=deflate_piece(header),
                samples_z=deflate_piece(samples),
            )
        )
    return tuple(rendered)
