"""One gzip stream from pieces compressed ahead of time, so a scrape never compresses.

Each piece of exposition text is compressed on its own, in the job that rendered it, as raw
deflate ending in a sync flush: that leaves the stream byte-aligned, so independently
compressed pieces can be concatenated and still decode as one deflate stream (the technique
pigz uses). A scrape only adds the gzip header, the final empty block and the trailer (CRC-32
and length of the plain body).
"""

import struct
import zlib
from collections.abc import Iterable

LEVEL = 6
# gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty fixed-Huffman block: ends the deflate stream the pieces started.
_FINAL_BLOCK = b"\x03\x00"


def deflate_piece(data: bytes) -> bytes:
    """Raw deflate of `data`, sync-flushed so another piece can follow it."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_from_pieces(pieces: Iterable[bytes], plain: bytes) -> bytes:
    """The gzip file for `plain`, given its pieces compressed by deflate_piece, in order."""
    trailer = struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    return b"".join((_HEADER, *pieces, _FINAL_BLOCK, trailer))
