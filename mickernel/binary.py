"""Bounds-checked reading and writing of the binary formats of mic and micd: every read checks the length
first and fails with a FormatError naming the format, the field and the offset (never an IndexError or a
struct.error on hostile bytes).

The byte order is explicit at every use, `LITTLE` or `BIG`, fixed per format by the data already written:
the VCS objects, the stat cache and the disk tier's index, usage ledger and journal are little-endian; KV
records, KV record files and upload journal entries big-endian. Strings are UTF-8 after a u16 (`str16`) or
u32 (`str32`) byte length. A format starts with a 4-byte magic, declared as its module's `MAGIC` and unique
in the project (a test checks), then a version byte (`check_header`).
"""

from __future__ import annotations

import struct

from mickernel.errors import FormatError

__all__ = ["BIG", "LITTLE", "Reader", "Writer", "check_header"]

LITTLE = "<"
BIG = ">"
_INTS = {order: tuple(struct.Struct(order + code) for code in "BHIQ") for order in (LITTLE, BIG)}


def check_header(
    fmt: str, data: bytes | memoryview, magic: bytes, versions: tuple[int, ...], *, reserved: int = 0
) -> int:
    """Check the magic, the version byte (one of `versions`) and the `reserved` zero bytes after it; return
    the version."""
    need = len(magic) + 1 + reserved
    if len(data) < need:
        raise FormatError(fmt, "truncated header", offset=0, expected=f">= {need} bytes", got=len(data))
    got = bytes(data[: len(magic)])
    if got != magic:
        raise FormatError(fmt, "bad magic", offset=0, expected=magic, got=got)
    version = data[len(magic)]
    if version not in versions:
        raise FormatError(fmt, "unsupported version", offset=len(magic), expected=versions, got=version)
    padding = bytes(data[len(magic) + 1 : need])
    if any(padding):
        raise FormatError(fmt, "reserved bytes not zero", offset=len(magic) + 1, got=padding)
    return version


class Reader:
    """Sequential reader over bytes in byte order `order` that raises FormatError (with the offset) on
    truncation."""

    def __init__(self, fmt: str, data: bytes | memoryview, offset: int = 0, *, order: str) -> None:
        self.fmt = fmt
        self.data = memoryview(data)
        self.pos = offset
        self._u8, self._u16, self._u32, self._u64 = _INTS[order]

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise FormatError(self.fmt, f"truncated {what}", offset=self.pos, expected=f"{n} bytes", got=left)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str = "u8") -> int:
        return int(self._u8.unpack(self._take(1, what))[0])

    def u16(self, what: str = "u16") -> int:
        return int(self._u16.unpack(self._take(2, what))[0])

    def u32(self, what: str = "u32") -> int:
        return int(self._u32.unpack(self._take(4, what))[0])

    def u64(self, what: str = "u64") -> int:
        return int(self._u64.unpack(self._take(8, what))[0])

    def raw(self, n: int, what: str = "bytes") -> bytes:
        return bytes(self._take(n, what))

    def text(self, length: int, what: str = "string") -> str:
        at = self.pos
        raw = self._take(length, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(self.fmt, f"{what} is not UTF-8", offset=at) from exc

    def str16(self, what: str = "string") -> str:
        return self.text(self.u16(what + " length"), what)

    def str32(self, what: str = "string") -> str:
        return self.text(self.u32(what + " length"), what)

    def count(self, item_min_size: int, what: str) -> int:
        """Read a u32 count and reject counts that cannot fit in the remaining bytes (no huge allocations)."""
        at = self.pos
        n = self.u32(what)
        if n * item_min_size > len(self.data) - self.pos:
            raise FormatError(self.fmt, f"{what} exceeds the data", offset=at, expected="fits", got=n)
        return n

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(
                self.fmt, "trailing bytes", offset=self.pos, expected=self.pos, got=len(self.data)
            )


class Writer:
    """Append-only writer in byte order `order`, the mirror of Reader."""

    def __init__(self, header: bytes = b"", *, order: str) -> None:
        self.parts: list[bytes] = [header] if header else []
        self._u8, self._u16, self._u32, self._u64 = _INTS[order]

    def u8(self, v: int) -> Writer:
        self.parts.append(self._u8.pack(v))
        return self

    def u16(self, v: int) -> Writer:
        self.parts.append(self._u16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        self.parts.append(self._u32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self.parts.append(self._u64.pack(v))
        return self

    def raw(self, b: bytes) -> Writer:
        self.parts.append(b)
        return self

    def str16(self, s: str) -> Writer:
        b = s.encode()
        if len(b) > 0xFFFF:
            raise ValueError(f"string of {len(b)} bytes exceeds the u16 length prefix")
        return self.u16(len(b)).raw(b)

    def str32(self, s: str) -> Writer:
        b = s.encode()
        return self.u32(len(b)).raw(b)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
