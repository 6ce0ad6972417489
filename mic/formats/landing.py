"""MICL: one immutable landing record, `landing/<position>`; creating it is the landing's linearization point.

Layout (little-endian):
    offset  width  field
    0       4      magic  b"MICL"
    4       1      version (1)
    5       8      u64 position (≥ 1)
    13      8      u64 base position of the session (< position)
    21      32     BLAKE3 of the root tree after this landing
    53      8      u64 HLC of the landing
    61      …      u16 + UTF-8 session id
                   u32 + UTF-8 goal
                   u32 path count N, then N × (u16 + UTF-8 path), strictly increasing: every path the landing
                       added, changed or deleted (the exact list conflict checks confirm against)
                   u8 bloom k (1..32), u32 bloom byte length, bloom bytes (see mic.bloom)
Invariants: base < position; paths sorted and unique; no trailing bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mic.bloom import Bloom
from mickernel.binary import LITTLE, Reader, Writer, check_header
from mickernel.errors import FormatError

__all__ = ["MAGIC", "VERSION", "Landing", "decode_landing", "encode_landing"]

MAGIC = b"MICL"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Landing:
    """A landed session: where it sits, what tree it produced, and exactly which paths it touched."""

    position: int
    base: int
    tree: bytes
    hlc: int
    session: str
    goal: str
    paths: tuple[str, ...]
    bloom: Bloom


def encode_landing(rec: Landing) -> bytes:
    """Encode a landing record (paths must be sorted and unique)."""
    if not 0 <= rec.base < rec.position or len(rec.tree) != 32:
        raise ValueError("landing needs base < position and a 32-byte tree hash")
    if list(rec.paths) != sorted(set(rec.paths)):
        raise ValueError("landing paths must be sorted and unique")
    w = Writer(MAGIC, order=LITTLE).u8(VERSION).u64(rec.position).u64(rec.base).raw(rec.tree).u64(rec.hlc)
    w.str16(rec.session).str32(rec.goal).u32(len(rec.paths))
    for path in rec.paths:
        w.str16(path)
    return w.u8(rec.bloom.k).u32(len(rec.bloom.bits)).raw(rec.bloom.bits).getvalue()


def decode_landing(raw: bytes | memoryview) -> Landing:
    """Decode a MICL record.

    Raises:
        FormatError: bad header, truncation, base ≥ position, unsorted paths, bad bloom parameters.
    """
    check_header("MICL", raw, MAGIC, (VERSION,))
    r = Reader("MICL", raw, 5, order=LITTLE)
    position, base = r.u64("position"), r.u64("base")
    if not base < position:
        raise FormatError("MICL", "base must precede position", offset=13, expected=f"< {position}", got=base)
    tree, hlc = r.raw(32, "tree"), r.u64("hlc")
    session, goal = r.str16("session id"), r.str32("goal")
    paths: list[str] = []
    for _ in range(r.count(2, "path count")):
        at = r.pos
        path = r.str16("path")
        if paths and path <= paths[-1]:
            raise FormatError("MICL", "paths not strictly increasing", offset=at, expected=f"> {paths[-1]!r}",
                              got=path)
        paths.append(path)
    k = r.u8("bloom k")
    if not 1 <= k <= 32:
        raise FormatError("MICL", "bloom k out of range", offset=r.pos - 1, expected="1..32", got=k)
    bits = r.raw(r.u32("bloom length"), "bloom bits")
    r.end()
    return Landing(position, base, tree, hlc, session, goal, tuple(paths), Bloom(k, bits))
