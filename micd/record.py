"""Binary codec for KV records (`micd.store.Record`), the form every tier stores.

Layout (all integers big-endian):

| offset | width | field                                                   |
|--------|-------|---------------------------------------------------------|
| 0      | 4     | magic `MICR`                                            |
| 4      | 1     | version (1)                                             |
| 5      | 4     | u32 value length V                                      |
| 9      | V     | value bytes                                             |
| …      | 2     | u16 ref count R                                         |
| …      | R×41  | per ref: u8 function id (1=sha256, 2=blake3), 32-byte hash, u64 size |
| …      | 2     | u16 metadata count M                                    |
| …      | …     | per entry: u16 key length, key UTF-8, u32 value length, value UTF-8 |

Invariants: the buffer ends exactly after the last metadata entry.
"""

from __future__ import annotations

import struct

from micd.errors import FormatError
from micd.store import Digest, Record

__all__ = ["MAGIC", "VERSION", "decode_record", "encode_record"]

MAGIC = b"MICR"
VERSION = 1
_FORMAT = "kv record"
_HEAD = struct.Struct(">4sBI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_REF = struct.Struct(">B32sQ")
_FUNCTION_IDS = {"sha256": 1, "blake3": 2}
_FUNCTION_NAMES = {v: k for k, v in _FUNCTION_IDS.items()}


def encode_record(record: Record) -> bytes:
    """Serialize a record."""
    parts = [_HEAD.pack(MAGIC, VERSION, len(record.value)), record.value, _U16.pack(len(record.refs))]
    for ref in record.refs:
        parts.append(_REF.pack(_FUNCTION_IDS[ref.function], bytes.fromhex(ref.hex), ref.size))
    parts.append(_U16.pack(len(record.metadata)))
    for key, val in record.metadata:
        key_b, val_b = key.encode(), val.encode()
        parts += [_U16.pack(len(key_b)), key_b, _U32.pack(len(val_b)), val_b]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(_FORMAT, "truncated", offset=self.pos, expected=n, got=len(self.data) - self.pos)
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))


def decode_record(data: bytes) -> Record:
    """Parse a record; raises FormatError on any malformed input."""
    reader = _Reader(data)
    magic, version, value_len = reader.unpack(_HEAD)
    if magic != MAGIC:
        raise FormatError(_FORMAT, "bad magic", offset=0, expected=MAGIC, got=magic)
    if version != VERSION:
        raise FormatError(_FORMAT, "unsupported version", offset=4, expected=VERSION, got=version)
    value = reader.take(value_len)
    refs = []
    for _ in range(reader.unpack(_U16)[0]):
        fid, raw, size = reader.unpack(_REF)
        if fid not in _FUNCTION_NAMES:
            raise FormatError(_FORMAT, "unknown digest function id", offset=reader.pos - _REF.size, got=fid)
        refs.append(Digest(_FUNCTION_NAMES[fid], raw.hex(), size))
    metadata = []
    for _ in range(reader.unpack(_U16)[0]):
        try:
            key = reader.take(reader.unpack(_U16)[0]).decode()
            val = reader.take(reader.unpack(_U32)[0]).decode()
        except UnicodeDecodeError as exc:
            raise FormatError(_FORMAT, "metadata is not UTF-8", offset=reader.pos) from exc
        metadata.append((key, val))
    if reader.pos != len(data):
        raise FormatError(_FORMAT, "trailing bytes", offset=reader.pos, expected=reader.pos, got=len(data))
    return Record(value, tuple(refs), tuple(metadata))
