"""The error root of mic and micd and the families both halves raise: one root, families by cause, data kept
in attributes.

Each edge (HTTP, gRPC, CLI) has exactly one function mapping these to its own status codes. Errors only one
half raises live in that half (`mic.errors`, `micd.errors`), under the same root.
"""

from __future__ import annotations

__all__ = ["BadRequest", "ConfigError", "FormatError", "IntegrityError", "MicError", "NotFound"]


class MicError(Exception):
    """Root of every error mic and micd raise on purpose."""


class BadRequest(MicError):
    """The caller sent something malformed (bad digest shape, bad key, path traversal, …)."""

    def __init__(self, what: str, value: object = None) -> None:
        self.what = what
        self.value = value
        super().__init__(what if value is None else f"{what}: {value!r}")


class ConfigError(MicError):
    """A configuration value is malformed or inconsistent; the message names the key and its source."""


class NotFound(MicError):
    """A requested object does not exist where it must (a miss on a normal read returns None instead)."""


class IntegrityError(MicError):
    """Bytes do not match the digest or size they were announced with; nothing was stored."""

    def __init__(self, expected: str, got: str, *, what: str = "blob") -> None:
        self.expected = expected
        self.got = got
        self.what = what
        super().__init__(f"{what} does not match its digest: expected {expected}, got {got}")


class FormatError(MicError):
    """Bytes on disk or on the wire do not parse as the named binary format."""

    def __init__(
        self, fmt: str, message: str, *, offset: int | None = None, expected: object = None, got: object = None
    ) -> None:
        self.format = fmt
        self.offset = offset
        self.expected = expected
        self.got = got
        detail = message
        if expected is not None or got is not None:
            detail += f" (expected {expected!r}, got {got!r})"
        if offset is not None:
            detail += f" at offset {offset}"
        super().__init__(f"{fmt}: {detail}")
