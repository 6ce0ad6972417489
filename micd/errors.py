"""Error hierarchy shared by micd and mic: one root, families by cause, data kept in attributes.

Each edge (HTTP, gRPC, CLI) has exactly one function mapping these to its own status codes.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "FormatError",
    "IntegrityError",
    "MicError",
    "NotFound",
    "StoreFull",
    "TierUnavailable",
    "Unauthorized",
]


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


class Unauthorized(MicError):
    """Missing or wrong session token."""


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


class StoreFull(MicError):
    """The disk tier reached its hard cap; the write was rejected and nothing was changed.

    `used` counts stored blobs and records, `reserved` what is held for writes in flight and journals (of
    every daemon sharing the cache), apart: a full cache and one busy with uploads call for different fixes.
    """

    def __init__(self, used: int, needed: int, hard_cap: int, *, reserved: int = 0) -> None:
        self.used = used
        self.reserved = reserved
        self.needed = needed
        self.hard_cap = hard_cap
        super().__init__(
            f"cache store full: {used} bytes used + {reserved} reserved (writes in flight, journals) "
            f"+ {needed} needed exceeds the hard cap of {hard_cap} bytes (raise store.disk_hard_cap or free space)"
        )


class Conflict(MicError):
    """A landing conflicts with landings since the session's base, or lost a compare-and-swap race."""

    def __init__(self, message: str, *, paths: tuple[str, ...] = (), sessions: tuple[str, ...] = ()) -> None:
        self.paths = paths
        self.sessions = sessions
        super().__init__(message)


class TierUnavailable(MicError):
    """A remote tier (S3) failed; callers above the tier degrade to a miss, never to an error."""
