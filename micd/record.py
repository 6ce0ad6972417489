"""Binary codec for KV records (`micd.store.Record`), the form every tier stores.

Layout of version 2, written today (all integers big-endian):

| offset | width | field                                                   |
|--------|-------|---------------------------------------------------------|
| 0      | 4     | magic `MICR`                                            |
| 4      | 1     | version (2)                                             |
| 5      | 4     | u32 value length V                                      |
| 9      | V     | value bytes                                             |
| …      | 4     | u32 ref count R (≤ `MAX_REFS`)                          |
| …      | R×41  | per ref: u8 function id (1=sha256, 2=blake3), 32-byte hash, u64 size |
| …      | 4     | u32 metadata count M (≤ `MAX_METADATA`)                 |
| …      | …     | per entry: u16 key length, key UTF-8, u32 value length, value UTF-8 |

Version 1 is the same with u16 counts; it is still read (records written before version 2), never written.
Its 16-bit ref count failed on an ActionResult with more than 65,535 outputs (a `node_modules`-sized output
directory); version 2 lifts that to `MAX_REFS`, a bound a real build stays far below and that keeps one record
under ~41 MiB. A record over a bound is refused with BadRequest, never truncated.

Invariants: the buffer ends exactly after the last metadata entry.
"""

from __future__ import annotations

import struct

from micd.store import Digest, Record
from mickernel.binary import BIG, Reader, Writer, check_header
from mickernel.errors import BadRequest, FormatError

__all__ = ["MAGIC", "MAX_METADATA", "MAX_REFS", "VERSION", "decode_record", "encode_record"]

MAGIC = b"MICR"
VERSION = 2
MAX_REFS = 1_000_000
"""The most CAS blobs one record may reference (an action with this many output files, say)."""
MAX_METADATA = 1024
_FORMAT = "kv record"
_REF = struct.Struct(">B32sQ")
_FUNCTION_IDS = {"sha256": 1, "blake3": 2}
_FUNCTION_NAMES = {v: k for k, v in _FUNCTION_IDS.items()}


def encode_record(record: Record) -> bytes:
    """Serialize a record (version 2).

    Raises:
        BadRequest: more than `MAX_REFS` refs or `MAX_METADATA` metadata entries.
    """
    if len(record.refs) > MAX_REFS:
        raise BadRequest(f"a record may reference at most {MAX_REFS} blobs", len(record.refs))
    if len(record.metadata) > MAX_METADATA:
        raise BadRequest(f"a record may carry at most {MAX_METADATA} metadata entries", len(record.metadata))
    ids = _FUNCTION_IDS
    w = Writer(MAGIC, order=BIG).u8(VERSION).u32(len(record.value)).raw(record.value).u32(len(record.refs))
    w.raw(b"".join([_REF.pack(ids[ref.function], bytes.fromhex(ref.hex), ref.size) for ref in record.refs]))
    w.u32(len(record.metadata))
    for key, val in record.metadata:
        w.str16(key).str32(val)
    return w.getvalue()


def decode_record(data: bytes) -> Record:
    """Parse a record of version 1 or 2; raises FormatError on any malformed input."""
    version = check_header(_FORMAT, data, MAGIC, (1, VERSION))
    reader = Reader(_FORMAT, data, 5, order=BIG)
    count = reader.u16 if version == 1 else reader.u32  # the width of the ref and metadata counts
    value = reader.raw(reader.u32("value length"), "value")
    refs = _refs(reader, count("ref count"))
    metadata = tuple(
        (reader.str16("metadata key"), reader.str32("metadata value")) for _ in range(count("metadata count"))
    )
    reader.end()
    return Record(value, refs, metadata)


def _refs(reader: Reader, count: int) -> tuple[Digest, ...]:
    """`count` refs in one `iter_unpack` pass (a record may hold up to a million of them)."""
    start = reader.pos
    raw = reader.raw(count * _REF.size, "refs")
    names = _FUNCTION_NAMES
    try:
        return tuple(Digest(names[fid], hash_.hex(), size) for fid, hash_, size in _REF.iter_unpack(raw))
    except KeyError as exc:
        bad = next(i for i, (fid, _, _) in enumerate(_REF.iter_unpack(raw)) if fid not in names)
        offset = start + bad * _REF.size
        raise FormatError(_FORMAT, "unknown digest function id", offset=offset, got=exc.args[0]) from None
