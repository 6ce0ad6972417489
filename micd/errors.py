"""The errors only the daemon raises (a full store, a failing remote tier, a wrong token), under the root
both halves share, `mickernel.errors.MicError`."""

from __future__ import annotations

from mickernel.errors import MicError

__all__ = [
    "StoreFull",
    "TierUnavailable",
    "Unauthorized",
]


class Unauthorized(MicError):
    """Missing or wrong session token."""


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


class TierUnavailable(MicError):
    """A remote tier (S3) failed; callers above the tier degrade to a miss, never to an error."""
