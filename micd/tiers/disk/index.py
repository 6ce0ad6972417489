"""The disk tier's index: a snapshot file for fast reopen, reconciled with directory listings on every open.

The files are the truth; the index only carries sizes (for caps) and last-access order (for eviction). On
open we list the shard directories (no stat per CAS file: the size is in the name) and take recency from the
snapshot. So after a crash the index cannot lie about what exists: a snapshot entry whose file is gone is
dropped, and a file the snapshot does not know (written since, or by another process) joins as most
recently used. Without a valid snapshot every file is stat'ed once for its atime (slow path, then saved).

Snapshot byte layout (all integers big-endian), `MAGIC` `MICI`, `VERSION` 1:

| offset     | width  | field                                                                        |
|------------|--------|------------------------------------------------------------------------------|
| 0          | 4      | magic `MICI`                                                                 |
| 4          | 1      | version (1)                                                                  |
| 5          | 3      | reserved, zero                                                               |
| 8          | 8      | u64 entry count N                                                            |
| 16         | N × 49 | entries, least recently used first: u8 kind (1 sha256 blob, 2 blake3 blob, |
|            |        | 3 KV record), 32-byte hash, u64 size, u64 last access (ns since the epoch)   |
| 16 + 49N   | 32     | blake3 of every preceding byte                                               |

Invariants: the file is exactly 48 + 49N bytes; kinds are 1–3; the checksum matches. Any violation is a
`FormatError` and the snapshot is ignored (rebuilt from the files), never trusted in part.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import blake3

from micd.errors import FormatError
from micd.tiers.disk.layout import KV, Layout, parse_blob_name
from micd.tiers.disk.lru import Entry, Lru

__all__ = [
    "MAGIC",
    "VERSION",
    "decode_snapshot",
    "encode_snapshot",
    "load_index",
    "read_snapshot",
    "save_snapshot",
    "scan_changes",
]

MAGIC = b"MICI"
VERSION = 1
_FORMAT = "disk index snapshot"
_HEAD = struct.Struct(">4sB3sQ")
_ENTRY = struct.Struct(">B32sQQ")
_SUM = 32
_KINDS = {"sha256": 1, "blake3": 2, KV: 3}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}


def encode_snapshot(entries: Iterable[tuple[str, Entry]]) -> bytes:
    """Serialize index entries (given oldest first)."""
    body = bytearray()
    count = 0
    for key, entry in entries:
        kind, _, name = key.partition("/")
        hex_ = name.partition(".")[0]
        body += _ENTRY.pack(_KINDS[kind], bytes.fromhex(hex_), entry.size, entry.atime_ns)
        count += 1
    data = _HEAD.pack(MAGIC, VERSION, b"\0\0\0", count) + body
    return bytes(data) + blake3.blake3(data).digest()


def decode_snapshot(data: bytes) -> list[tuple[str, Entry]]:
    """Parse a snapshot into (key, Entry) pairs, oldest first; FormatError on any malformed input."""
    if len(data) < _HEAD.size + _SUM:
        raise FormatError(_FORMAT, "truncated", offset=0, expected=_HEAD.size + _SUM, got=len(data))
    magic, version, reserved, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(_FORMAT, "bad magic", offset=0, expected=MAGIC, got=magic)
    if version != VERSION:
        raise FormatError(_FORMAT, "unsupported version", offset=4, expected=VERSION, got=version)
    if reserved != b"\0\0\0":
        raise FormatError(_FORMAT, "reserved bytes not zero", offset=5, got=reserved)
    expected_len = _HEAD.size + count * _ENTRY.size + _SUM
    if len(data) != expected_len:
        raise FormatError(_FORMAT, "length does not match entry count", expected=expected_len, got=len(data))
    body_end = expected_len - _SUM
    got_sum = bytes(data[body_end:])
    if blake3.blake3(data[:body_end]).digest() != got_sum:
        raise FormatError(_FORMAT, "checksum mismatch", offset=body_end)
    out: list[tuple[str, Entry]] = []
    view = memoryview(data)[_HEAD.size : body_end]
    for i, (kind, raw, size, atime) in enumerate(_ENTRY.iter_unpack(view)):
        name = _KIND_NAMES.get(kind)
        if name is None:
            raise FormatError(_FORMAT, "unknown entry kind", offset=_HEAD.size + i * _ENTRY.size, got=kind)
        key = f"{KV}/{raw.hex()}" if kind == 3 else f"{name}/{raw.hex()}.{size}"
        out.append((key, Entry(size, atime)))
    return out


def _scan(layout: Layout) -> dict[str, int | None]:
    """Every index key present on disk → its size from the name (None for KV records: unknown)."""
    found: dict[str, int | None] = {}
    for prefix, directory in layout.shard_dirs():
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        if prefix == f"{KV}/":
            for name in names:
                if len(name) == 64:
                    found[prefix + name] = None
            continue
        for name in names:
            size = parse_blob_name(name)
            if size is not None:
                found[prefix + name] = size
    return found


def _stat_entry(layout: Layout, key: str) -> Entry | None:
    try:
        st = os.stat(layout.key_path(key))
    except FileNotFoundError:
        return None
    return Entry(st.st_size, st.st_atime_ns)


def read_snapshot(layout: Layout) -> list[tuple[str, Entry]] | None:
    """The snapshot's entries, or None if it is missing or invalid (blocking)."""
    try:
        return decode_snapshot(layout.snapshot.read_bytes())
    except (FileNotFoundError, FormatError):
        return None


def load_index(layout: Layout) -> tuple[Lru, bool]:
    """Rebuild the LRU from the snapshot and the files (blocking). Returns (lru, snapshot_was_valid)."""
    snapshot = read_snapshot(layout)
    on_disk = _scan(layout)
    now = time.time_ns()
    if snapshot is None:
        stated = [(key, _stat_entry(layout, key)) for key in on_disk]
        ordered = sorted(((k, e) for k, e in stated if e is not None), key=lambda item: item[1].atime_ns)
        return Lru(ordered), False
    merged: list[tuple[str, Entry]] = []
    for key, entry in snapshot:
        if key in on_disk:
            size = on_disk.pop(key)
            merged.append((key, entry if size is None else Entry(size, entry.atime_ns)))
    for key, size in on_disk.items():  # new since the snapshot: most recently used, as far as we know
        if size is None:
            stat_entry = _stat_entry(layout, key)
            if stat_entry is not None:
                merged.append((key, Entry(stat_entry.size, max(stat_entry.atime_ns, now))))
        else:
            merged.append((key, Entry(size, now)))
    return Lru(merged), True


def scan_changes(layout: Layout, known: set[str]) -> tuple[dict[str, Entry], set[str]]:
    """Files that appeared (written by other processes) and keys in `known` whose file is gone (blocking)."""
    on_disk = _scan(layout)
    gone = {key for key in known if key not in on_disk}
    now = time.time_ns()
    new: dict[str, Entry] = {}
    for key, size in on_disk.items():
        if key in known:
            continue
        if size is None:
            stat_entry = _stat_entry(layout, key)
            if stat_entry is not None:
                new[key] = Entry(stat_entry.size, now)
        else:
            new[key] = Entry(size, now)
    return new, gone


def save_snapshot(layout: Layout, entries: Iterable[tuple[str, Entry]], tmp_dir: Path) -> None:
    """Write the snapshot atomically (temp in `tmp_dir`, fsync, rename); blocking."""
    data = encode_snapshot(entries)
    tmp = tmp_dir / f"snapshot.{os.getpid()}.{time.monotonic_ns()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, layout.snapshot)
    finally:
        tmp.unlink(missing_ok=True)
