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
    """`{a="1",b="2"}` (nothing for no labels), in the order given (prometheus_client sorts
    by name: callers do too); names are validated when the config loads and written as they are."""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


_CHUNK_LINES = 512


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
        # Lines are joined into bytes every _CHUNK_LINES: a str per line costs ~50 bytes on top
        # of its text, which at 10,000 tables times 40 families was most of a run's memory.
        self._lines: list[str] = []
        self._chunks: list[bytes] = []
        self.series = 0

    def add(self, labels: str, value: float) -> None:
        """A sample; `labels` as label_set writes them."""
        self._lines.append(f"{self._sample}{labels} {go_float(value)}\n")
        self.series += 1
        if len(self._lines) == _CHUNK_LINES:
            self._chunks.append("".join(self._lines).encode())
            self._lines.clear()

    def rendered(self) -> RenderedFamily:
        if self._lines:
            self._chunks.append("".join(self._lines).encode())
            self._lines = []
        samples = b"".join(self._chunks)
        self._chunks = [samples]  # the chunks' memory goes; rendering again copies nothing
        return RenderedFamily(self.name, self._header.encode(), samples, self.series)


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


@dataclass(frozen=True)
class Deflated:
    """A piece of exposition text as the store keeps it: compressed, with what a gzip trailer
    needs of the text (its CRC-32 and length), so the text itself need not be kept."""

    data: bytes  # raw deflate, sync-flushed: another piece can follow it
    crc: int  # CRC-32 of the text
    length: int  # of the text, in bytes
    zeros_crc: int  # CRC-32 of as many zero bytes: what crc32_combine needs


def deflate_text(chunks: Iterable[bytes]) -> Deflated:
    """The text made of `chunks`, compressed as one piece (without joining the chunks)."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    out, crc, length = [], 0, 0
    for chunk in chunks:
        out.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return Deflated(b"".join(out), crc, length, _crc_of_zeros(length, 0))


def inflate(pieces: Iterable[Deflated]) -> bytes:
    """The text of pieces made by deflate_text, in order."""
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    return b"".join(decompressor.decompress(piece.data) for piece in pieces)


_ZEROS = memoryview(bytes(1 << 20))


def _crc_of_zeros(length: int, crc: int) -> int:
    """CRC-32 continued from `crc` over `length` zero bytes."""
    if length <= len(_ZEROS):  # nearly always: one call (with thousands of small pieces)
        return zlib.crc32(_ZEROS[:length], crc)
    while length > 0:
        step = min(length, len(_ZEROS))
        crc = zlib.crc32(_ZEROS[:step], crc)
        length -= step
    return crc


def crc32_combine(crc: int, piece: Deflated) -> int:
    """CRC-32 of a text followed by `piece`'s text, from the text's CRC-32 (`crc`).

    zlib.crc32(data, start) is affine in `start` (CRC-32 is linear over GF(2) but for its
    pre- and post-conditioning): crc32(data, start) = crc32(zeros, start) ^ crc32(data, 0) ^
    crc32(zeros, 0), the zeros as long as the data. zlib's crc32_combine does this with
    less work, but Python's zlib does not expose it; a pass over zeros costs what the CRC of
    the text itself would (~0.3 ms per MB).
    """
    if crc == 0:  # crc32(zeros, 0) twice cancels out: nothing before the piece
        return piece.crc
    return _crc_of_zeros(piece.length, crc) ^ piece.crc ^ piece.zeros_crc


def gzip_from_pieces(pieces: Sequence[Deflated]) -> bytes:
    """The gzip file of the pieces' texts, in order: a join, no compression."""
    crc, length = 0, 0
    for piece in pieces:
        crc = crc32_combine(crc, piece)
        length += piece.length
    trailer = struct.pack("<II", crc, length & 0xFFFFFFFF)
    return b"".join((_HEADER, *(piece.data for piece in pieces), _FINAL_BLOCK, trailer))
