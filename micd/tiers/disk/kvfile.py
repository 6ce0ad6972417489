"""Codec of a KV record file on disk: the record bytes bound to their (namespace, key) and checksummed.

A flipped bit in a record could still decode as a valid but wrong record (a wrong hit), so every file ends in
a checksum; storing namespace and key lets a read confirm the file answers the question asked.

Byte layout (integers big-endian), `MAGIC` `MICK`, `VERSION` 1:

| offset        | width | field                                                   |
|---------------|-------|---------------------------------------------------------|
| 0             | 4     | magic `MICK`                                            |
| 4             | 1     | version (1)                                             |
| 5             | 2     | u16 namespace length N                                  |
| 7             | 2     | u16 key length K                                        |
| 9             | N     | namespace, UTF-8                                        |
| 9 + N         | K     | key, UTF-8                                              |
| 9 + N + K     | R     | the record, as `micd.record.encode_record` wrote it     |
| end - 32      | 32    | blake3 of every preceding byte                          |

Invariants: at least 41 bytes; N + K fit before the checksum; checksum matches. Violations raise FormatError.
"""

from __future__ import annotations

import struct

import blake3

from mickernel.binary import check_header
from mickernel.errors import FormatError

__all__ = ["MAGIC", "VERSION", "decode_kv_file", "encode_kv_file"]

MAGIC = b"MICK"
VERSION = 1
_FORMAT = "kv record file"  # on disk and, since issue 10, in S3
_HEAD = struct.Struct(">4sBHH")
_SUM = 32


def encode_kv_file(namespace: str, key: str, record: bytes) -> bytes:
    """Serialize one record file."""
    ns_b, key_b = namespace.encode(), key.encode()
    body = _HEAD.pack(MAGIC, VERSION, len(ns_b), len(key_b)) + ns_b + key_b + record
    return body + blake3.blake3(body).digest()


def decode_kv_file(data: bytes) -> tuple[str, str, bytes]:
    """Return (namespace, key, record bytes); FormatError on anything malformed or corrupted."""
    if len(data) < _HEAD.size + _SUM:
        raise FormatError(_FORMAT, "truncated", offset=0, expected=_HEAD.size + _SUM, got=len(data))
    check_header(_FORMAT, data, MAGIC, (VERSION,))
    _, _, ns_len, key_len = _HEAD.unpack_from(data)
    body_end = len(data) - _SUM
    names_end = _HEAD.size + ns_len + key_len
    if names_end > body_end:
        raise FormatError(
            _FORMAT, "names overrun the file", offset=_HEAD.size, expected=body_end, got=names_end
        )
    if blake3.blake3(data[:body_end]).digest() != data[body_end:]:
        raise FormatError(_FORMAT, "checksum mismatch", offset=body_end)
    try:
        namespace = data[_HEAD.size : _HEAD.size + ns_len].decode()
        key = data[_HEAD.size + ns_len : names_end].decode()
    except UnicodeDecodeError as exc:
        raise FormatError(_FORMAT, "names are not UTF-8", offset=_HEAD.size) from exc
    return namespace, key, bytes(data[names_end:body_end])
