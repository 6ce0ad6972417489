"""Quantities as people write them in configuration: byte sizes ("512MiB") and durations ("10m").

Not for wire values: a blob size in a digest is a plain decimal byte count, checked by `micd.validate`.
"""

from __future__ import annotations

import re

__all__ = ["parse_byte_size", "parse_duration"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_byte_size(value: object) -> int:
    """Parse a byte size: an int, or a string such as "512MiB", "10G", "1.5 GiB" (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must be ≥ 0")
        return value
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"expected a size like 512MiB or 10GiB, got {value!r}")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


def parse_duration(value: object) -> float:
    """Parse seconds: a number, or a string such as "90", "30s", "10m", "2h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        if not value >= 0:  # also refuses nan, which every comparison would let through
            raise ValueError("duration must be a number ≥ 0")
        return float(value)
    match = _DURATION.fullmatch(str(value))
    if not match:
        raise ValueError(f"expected a duration like 600, 30s, 10m or 2h, got {value!r}")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "").lower()]
