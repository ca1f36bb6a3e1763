"""Rendering metric families to Prometheus text exposition once per poll, plain and deflated.

Pieces of exposition text are compressed ahead of the scrape (see store.py) as raw deflate
ending in a sync flush: that leaves the stream byte-aligned, so separately compressed pieces
can be concatenated and still decode as one deflate stream (the technique pigz uses). A scrape
only adds the gzip header, the final empty block and the trailer (CRC-32 and length of the
plain body): `gzip_from_pieces`.
"""

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

LEVEL = 6
# gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty fixed-Huffman block: ends the deflate stream the pieces started.
_FINAL_BLOCK = b"\x03\x00"


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


def go_float(value: float) -> str:
    """A sample value as Prometheus' Go code spells it, as prometheus_client does: +Inf, -Inf,
    NaN, and exponents for large numbers (1e+20, 1.2345678901234e+13)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    """As the text format wants a label value: backslash, newline and quote escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_set(names: Sequence[str], values: Sequence[str]) -> str:
    """`{a="1",b="2"}`, in the order given (prometheus_client sorts by name: callers do too);
    names are validated when the config loads and written as they are."""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class FamilyWriter:
    """One metric family written straight to exposition text, sample by sample.

    The same text prometheus_client writes (its float formatting is reused), without a
    Python object per sample.
    """

    def __init__(self, name: str, help_text: str, *, counter: bool) -> None:
        self.name = name.removesuffix("_total") if counter else name  # the family's name
        self._sample = f"{self.name}_total" if counter else name
        help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        kind = "counter" if counter else "gauge"
        self._header = f"# HELP {self._sample} {help_escaped}\n# TYPE {self._sample} {kind}\n"
        self._lines: list[str] = []

    @property
    def series(self) -> int:
        return len(self._lines)

    def add(self, labels: str, value: float) -> None:
        """A sample; `labels` as label_set writes them."""
        self._lines.append(f"{self._sample}{labels} {go_float(value)}\n")

    def rendered(self) -> RenderedFamily:
        return RenderedFamily(
            self.name, self._header.encode(), "".join(self._lines).encode(), self.series
        )


def merge_families(parts: Iterable[Sequence[RenderedFamily]]) -> tuple[RenderedFamily, ...]:
    """Families of several databases (or targets) as one: each family's samples joined under
    one header, in the order of the parts. One join per family: adding the bytes part by part
    would copy them again for every part (quadratic, at 1,000 databases)."""
    grouped: dict[str, list[RenderedFamily]] = {}
    for families in parts:
        for family in families:
            grouped.setdefault(family.name, []).append(family)
    return tuple(
        same[0]
        if len(same) == 1
        else RenderedFamily(
            same[0].name,
            same[0].header,
            b"".join(f.samples for f in same),
            sum(f.series for f in same),
        )
        for same in grouped.values()
    )


class _OneShot:
    """The registry interface generate_latest() expects, over a fixed list of families."""

    def __init__(self, families: Iterable["Metric"]) -> None:
        self._families = families

    def collect(self) -> Iterable["Metric"]:
        return self._families


def render(families: Iterable["Metric"]) -> tuple[RenderedFamily, ...]:
    """prometheus_client families as rendered families, merging any that share a name.

    For tests and benchmarks that build families with prometheus_client; the exporter itself
    writes its text with FamilyWriter and never loads prometheus_client.
    """
    from prometheus_client.exposition import generate_latest  # noqa: PLC0415 (see above)

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
        rendered.append(RenderedFamily(family.name, header, samples, len(family.samples)))
    return tuple(rendered)


def deflate_piece(data: bytes) -> bytes:
    """Raw deflate of `data`, sync-flushed so another piece can follow it."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_from_pieces(pieces: Iterable[bytes], plain: bytes) -> bytes:
    """The gzip file for `plain`, given its pieces compressed by deflate_piece, in order."""
    trailer = struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    return b"".join((_HEADER, *pieces, _FINAL_BLOCK, trailer))
