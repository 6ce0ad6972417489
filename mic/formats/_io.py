"""Bounds-checked little helpers shared by the codecs: every read checks the length first.

All integers are little-endian. Strings are UTF-8 with a u16 (short) or u32 (long) byte-length prefix.
"""

from __future__ import annotations

import struct

from mickernel.errors import FormatError

__all__ = ["Reader", "Writer", "check_header"]

_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q"))


def check_header(fmt: str, data: bytes | memoryview, magic: bytes, versions: tuple[int, ...]) -> int:
    """Check magic and version byte; return the version."""
    if len(data) < len(magic) + 1:
        raise FormatError(fmt, "truncated header", offset=0, expected=f">= {len(magic) + 1} bytes", got=len(data))
    if bytes(data[: len(magic)]) != magic:
        raise FormatError(fmt, "bad magic", offset=0, expected=magic, got=bytes(data[: len(magic)]))
    version = data[len(magic)]
    if version not in versions:
        raise FormatError(fmt, "unsupported version", offset=len(magic), expected=versions, got=version)
    return version


class Reader:
    """Sequential reader over bytes that raises FormatError (with the offset) instead of IndexError."""

    def __init__(self, fmt: str, data: bytes | memoryview, offset: int = 0) -> None:
        self.fmt = fmt
        self.data = memoryview(data)
        self.pos = offset

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(
                self.fmt, f"truncated {what}", offset=self.pos, expected=f"{n} bytes", got=len(self.data) - self.pos
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str = "u8") -> int:
        return int(_U8.unpack(self._take(1, what))[0])

    def u16(self, what: str = "u16") -> int:
        return int(_U16.unpack(self._take(2, what))[0])

    def u32(self, what: str = "u32") -> int:
        return int(_U32.unpack(self._take(4, what))[0])

    def u64(self, what: str = "u64") -> int:
        return int(_U64.unpack(self._take(8, what))[0])

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
    """Append-only little-endian writer, the mirror of Reader."""

    def __init__(self, header: bytes = b"") -> None:
        self.parts: list[bytes] = [header] if header else []

    def u8(self, v: int) -> Writer:
        self.parts.append(_U8.pack(v))
        return self

    def u16(self, v: int) -> Writer:
        self.parts.append(_U16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        self.parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self.parts.append(_U64.pack(v))
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
