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

from dataclasses import dataclass

from mic.errors import FormatError

from ._io import Reader, Writer, check_header

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


def encode_node(node: Node) -> bytes:
    """Encode a node; the caller guarantees sorted unique keys (checked here too, encoding is cheap)."""
    w = Writer(MAGIC).u8(VERSION).u8(node.level).u32(len(node.keys))
    prev = None
    for key, value in zip(node.keys, node.values, strict=True):
        if not key or (prev is not None and key <= prev):
            raise ValueError(f"keys must be non-empty and strictly increasing: {prev!r} then {key!r}")
        prev = key
        w.str16(key)
        if isinstance(value, FileEntry):
            w.u8(value.mode).raw(value.hash).u64(value.size)
        elif isinstance(value, ChildRef):
            w.raw(value.hash).u64(value.count)
        else:
            raise TypeError(f"node values must be FileEntry or ChildRef, got {type(value).__name__}")
    return w.getvalue()


def decode_node(raw: bytes | memoryview) -> Node:
    """Decode a MICN node.

    Raises:
        FormatError: bad header, truncation, unknown mode, unsorted or empty keys, empty internal node.
    """
    check_header("MICN", raw, MAGIC, (VERSION,))
    r = Reader("MICN", raw, 5)
    level = r.u8("level")
    count = r.count(43, "entry count")
    if level > 0 and count == 0:
        raise FormatError("MICN", "empty internal node", offset=6, expected=">= 1 entry", got=0)
    keys: list[str] = []
    values: list[FileEntry | ChildRef] = []
    for _ in range(count):
        at = r.pos
        key = r.str16("key")
        if not key or (keys and key <= keys[-1]):
            raise FormatError("MICN", "keys not strictly increasing", offset=at, expected=f"> {keys[-1:]}", got=key)
        keys.append(key)
        if level == 0:
            mode = r.u8("mode")
            if mode not in MODES:
                raise FormatError("MICN", "unknown mode", offset=r.pos - 1, expected=tuple(MODES), got=mode)
            values.append(FileEntry(r.raw(32, "hash"), r.u64("size"), mode))
        else:
            child, files = r.raw(32, "child hash"), r.u64("file count")
            if files == 0:
                raise FormatError("MICN", "child with no files", offset=r.pos - 8, expected=">= 1", got=0)
            values.append(ChildRef(key, child, files))
    r.end()
    return Node(level, tuple(keys), tuple(values))  # type: ignore[arg-type]
