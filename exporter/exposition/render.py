"""Rendering metric families to Prometheus text exposition once per poll, plain and deflated.

Each piece of exposition text is also compressed on its own, in the job that rendered it, as
raw deflate ending in a sync flush: that leaves the stream byte-aligned, so independently
compressed pieces can be concatenated and still decode as one deflate stream (the technique
pigz uses). A scrape only adds the gzip header, the final empty block and the trailer (CRC-32
and length of the plain body): `gzip_from_pieces`.
"""

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

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
    # The same two texts compressed ahead of time (deflate_piece), by the job, not the scrape.
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


def deflate_piece(data: bytes) -> bytes:
    """Raw deflate of `data`, sync-flushed so another piece can follow it."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_from_pieces(pieces: Iterable[bytes], plain: bytes) -> bytes:
    """The gzip file for `plain`, given its pieces compressed by deflate_piece, in order."""
    trailer = struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    return b"".join((_HEADER, *pieces, _FINAL_BLOCK, trailer))
