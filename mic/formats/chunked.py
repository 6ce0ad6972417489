"""MICC: a file above the chunk size, stored as the list of its chunks (each chunk a MICB blob).

Layout (little-endian):
    offset  width  field
    0       4      magic  b"MICC"
    4       1      version (1)
    5       4      u32 chunk count N (≥ 1)
    9       32·N   BLAKE3 of each chunk's uncompressed bytes, in file order
Invariants: N ≥ 1; the body is exactly 32·N bytes. The whole file's BLAKE3 (the object key) is checked by the
reader after reassembly.
"""

from __future__ import annotations

import struct

from mickernel.binary import check_header
from mickernel.errors import FormatError

from .blob import MAX_SIZE

__all__ = ["CHUNK_SIZE", "MAGIC", "VERSION", "decode_chunked", "encode_chunked"]

MAGIC = b"MICC"
VERSION = 1
CHUNK_SIZE = MAX_SIZE
_HEADER = struct.Struct("<4sBI")


def encode_chunked(chunk_hashes: list[bytes]) -> bytes:
    """Encode the ordered list of 32-byte chunk hashes."""
    if not chunk_hashes or any(len(h) != 32 for h in chunk_hashes):
        raise ValueError("MICC needs at least one chunk hash, each 32 bytes")
    return _HEADER.pack(MAGIC, VERSION, len(chunk_hashes)) + b"".join(chunk_hashes)


def decode_chunked(raw: bytes | memoryview) -> list[bytes]:
    """Decode a MICC object to its chunk hashes.

    Raises:
        FormatError: bad header, zero chunks, or a body that is not exactly 32·N bytes.
    """
    check_header("MICC", raw, MAGIC, (VERSION,))
    if len(raw) < _HEADER.size:
        raise FormatError("MICC", "truncated header", offset=0, expected=_HEADER.size, got=len(raw))
    _, _, count = _HEADER.unpack_from(raw)
    if count == 0:
        raise FormatError("MICC", "no chunks", offset=5, expected=">= 1", got=0)
    if len(raw) != _HEADER.size + 32 * count:
        raise FormatError("MICC", "body length", offset=_HEADER.size, expected=32 * count, got=len(raw) - 9)
    body = bytes(raw[_HEADER.size :])
    return [body[i : i + 32] for i in range(0, len(body), 32)]
