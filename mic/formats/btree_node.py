"""MICN: one node of the persistent B+ tree that maps paths to file entries. A node's key is its BLAKE3.

Layout (little-endian):
    offset  width  field
    0       4      magic  b"MICN"
    4       1      version (1)
    5       1      u8 level: 0 = leaf, ≥ 1 = internal (children are at level - 1)
    6       4      u32 entry count
    10      …      entries, in strictly increasing key order (byte order of the UTF-8 path):
        leaf:      u16 path length, path (UTF-8), u8 mode (0 file, 1 executable, 2 symlink),
                   32 BLAKE3 of the content, u64 content size
        internal:  u16 key length, first key of the child (UTF-8), 32 child node hash,
                   u64 number of files below the child (≥ 1)
Invariants: keys non-empty and strictly increasing; only a leaf (the empty tree) may have zero entries; no
trailing bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mickernel.binary import check_header
from mickernel.errors import FormatError

__all__ = [
    "MAGIC",
    "MODES",
    "VERSION",
    "ChildRef",
    "FileEntry",
    "Node",
    "decode_node",
    "encode_node",
]

MAGIC = b"MICN"
VERSION = 1
MODES = {0: "file", 1: "exec", 2: "symlink"}


@dataclass(frozen=True, slots=True)
class FileEntry:
    """What a path maps to: content hash and size, and the mode (file, exec or symlink)."""

    hash: bytes
    size: int
    mode: int = 0


@dataclass(frozen=True, slots=True)
class ChildRef:
    """An internal node's pointer to a child: the child's first key, its hash and how many files it holds."""

    first_key: str
    hash: bytes
    count: int


@dataclass(frozen=True, slots=True)
class Node:
    """A decoded node: `keys[i]` pairs with `values[i]` (FileEntry in a leaf, ChildRef in an internal node)."""

    level: int
    keys: tuple[str, ...]
    values: tuple[FileEntry, ...] | tuple[ChildRef, ...]


_HEADER = struct.Struct("<4sBBI")
_KEY_LEN = struct.Struct("<H")
_LEAF_VALUE = struct.Struct("<B32sQ")
_CHILD_VALUE = struct.Struct("<32sQ")

# Nodes are encoded and decoded on every landing (the hot path under many concurrent landers), so these two
# functions use precompiled structs directly instead of the generic Reader/Writer helpers.


def encode_node(node: Node) -> bytes:
    """Encode a node; the caller guarantees sorted unique keys (checked here too, encoding is cheap)."""
    parts = [_HEADER.pack(MAGIC, VERSION, node.level, len(node.keys))]
    append = parts.append
    prev = None
    for key, value in zip(node.keys, node.values, strict=True):
        if not key or (prev is not None and key <= prev):
            raise ValueError(f"keys must be non-empty and strictly increasing: {prev!r} then {key!r}")
        prev = key
        raw_key = key.encode()
        if not isinstance(value, FileEntry | ChildRef):
            raise TypeError(f"node values must be FileEntry or ChildRef, got {type(value).__name__}")
        if len(raw_key) > 0xFFFF or len(value.hash) != 32:
            raise ValueError(f"key longer than 65535 bytes or hash not 32 bytes at {key!r}")
        append(_KEY_LEN.pack(len(raw_key)))
        append(raw_key)
        if isinstance(value, FileEntry):
            append(_LEAF_VALUE.pack(value.mode, value.hash, value.size))
        else:
            append(_CHILD_VALUE.pack(value.hash, value.count))
    return b"".join(parts)


def _truncated(at: int, need: int, have: int) -> FormatError:
    return FormatError("MICN", "truncated entry", offset=at, expected=f"{need} bytes", got=have)


def decode_node(raw: bytes | memoryview) -> Node:
    """Decode a MICN node.

    Raises:
        FormatError: bad header, truncation, unknown mode, unsorted or empty keys, empty internal node.
    """
    check_header("MICN", raw, MAGIC, (VERSION,))
    data = bytes(raw)
    n = len(data)
    if n < _HEADER.size:
        raise FormatError("MICN", "truncated header", offset=0, expected=_HEADER.size, got=n)
    _, _, level, count = _HEADER.unpack_from(data)
    if count * 43 > n - _HEADER.size:
        raise FormatError("MICN", "entry count exceeds the data", offset=6, expected="fits", got=count)
    if level > 0 and count == 0:
        raise FormatError("MICN", "empty internal node", offset=6, expected=">= 1 entry", got=0)
    keys: list[str] = []
    values: list[FileEntry | ChildRef] = []
    value_struct = _LEAF_VALUE if level == 0 else _CHILD_VALUE
    pos = _HEADER.size
    prev = ""
    for _ in range(count):
        at = pos
        if pos + 2 > n:
            raise _truncated(at, 2, n - pos)
        (key_len,) = _KEY_LEN.unpack_from(data, pos)
        pos += 2
        end = pos + key_len
        if end + value_struct.size > n:
            raise _truncated(pos, key_len + value_struct.size, n - pos)
        try:
            key = data[pos:end].decode()
        except UnicodeDecodeError as exc:
            raise FormatError("MICN", "key is not UTF-8", offset=pos) from exc
        if not key or (keys and key <= prev):
            raise FormatError("MICN", "keys not strictly increasing", offset=at, expected=f"> {prev!r}", got=key)
        keys.append(key)
        prev = key
        if level == 0:
            mode, digest, size = _LEAF_VALUE.unpack_from(data, end)
            if mode not in MODES:
                raise FormatError("MICN", "unknown mode", offset=end, expected=tuple(MODES), got=mode)
            values.append(FileEntry(digest, size, mode))
        else:
            digest, files = _CHILD_VALUE.unpack_from(data, end)
            if files == 0:
                raise FormatError("MICN", "child with no files", offset=end + 32, expected=">= 1", got=0)
            values.append(ChildRef(key, digest, files))
        pos = end + value_struct.size
    if pos != n:
        raise FormatError("MICN", "trailing bytes", offset=pos, expected=pos, got=n)
    return Node(level, tuple(keys), tuple(values))  # type: ignore[arg-type]
