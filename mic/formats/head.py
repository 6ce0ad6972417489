"""The project head: exactly 48 bytes, the one mutable object (compare-and-swapped by landers).

Layout (little-endian), fixed by architecture.md:
    offset  width  field
    0       8      u64 position (number of landings it covers; 0 = the empty project)
    8       32     BLAKE3 of the root tree node at that position
    40      8      u64 HLC of that landing
There is no room for a magic or version byte: the exact length is the format check, and a future version would be
recognised by a different length. The head may lag the true tip; readers roll forward over `landing/<pos+1>`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mickernel.errors import FormatError

__all__ = ["SIZE", "Head", "decode_head", "encode_head"]

_STRUCT = struct.Struct("<Q32sQ")
SIZE = _STRUCT.size


@dataclass(frozen=True, slots=True)
class Head:
    """Position, root tree hash and HLC of a landing (the head points at the newest one it knows)."""

    position: int
    tree: bytes
    hlc: int


def encode_head(head: Head) -> bytes:
    """Encode a head to its 48 bytes."""
    if len(head.tree) != 32:
        raise ValueError("tree hash must be 32 bytes")
    return _STRUCT.pack(head.position, head.tree, head.hlc)


def decode_head(raw: bytes | memoryview) -> Head:
    """Decode 48 bytes to a Head.

    Raises:
        FormatError: the length is not exactly 48.
    """
    if len(raw) != SIZE:
        raise FormatError("head", "wrong length", offset=0, expected=SIZE, got=len(raw))
    position, tree, hlc = _STRUCT.unpack(raw)
    return Head(position, tree, hlc)
