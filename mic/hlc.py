"""Hybrid logical clock stamps: causality survives clock skew between agents and machines.

A stamp is a u64: the upper 48 bits are wall-clock milliseconds, the lower 16 a logical counter. `tick` gives a
stamp greater than every stamp this process has seen; `observe` folds in a stamp read from the store (a head, a
landing), so an event caused by a landing is always stamped after it, whatever the local clock says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "format_hlc", "pack", "unpack"]

_LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << _LOGICAL_BITS) - 1


def pack(millis: int, logical: int) -> int:
    """Combine wall milliseconds and a logical counter into one comparable u64."""
    return (millis << _LOGICAL_BITS) | (logical & _LOGICAL_MASK)


def unpack(stamp: int) -> tuple[int, int]:
    """Split a stamp into (wall milliseconds, logical counter)."""
    return stamp >> _LOGICAL_BITS, stamp & _LOGICAL_MASK


def format_hlc(stamp: int) -> str:
    """Human form: ISO-8601 UTC time to the millisecond, plus the logical counter when it is not zero."""
    millis, logical = unpack(stamp)
    text = datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return f"{text}+{logical}" if logical else text


class Clock:
    """A hybrid logical clock; `last` can be persisted and restored to stay monotonic across processes."""

    def __init__(self, last: int = 0, *, wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.last = last
        self._wall_ms = wall_ms

    def tick(self) -> int:
        """Return a new stamp greater than every stamp issued or observed so far."""
        millis, logical = unpack(self.last)
        now = self._wall_ms()
        self.last = pack(now, 0) if now > millis else pack(millis, logical + 1)
        if logical + 1 > _LOGICAL_MASK and now <= millis:  # counter overflow: borrow the next millisecond
            self.last = pack(millis + 1, 0)
        return self.last

    def observe(self, remote: int) -> None:
        """Fold in a stamp from elsewhere, so the next `tick` is after it."""
        self.last = max(self.last, remote)
