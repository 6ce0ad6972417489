"""Eviction policy and the blocking victim check of the disk tier.

Several processes share the root and each has its own LRU view, so a victim is re-checked on disk right
before it is deleted: if its atime is newer than what we recorded, another process used it (readers bump
atime, throttled, see `store.py`), so it is kept and moved to the recent end instead. Deleting a file another
process is reading is safe on POSIX: its open fd keeps the bytes. The delete itself never removes a file
another process published at that name after the check (`files.unlink_if_same`).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from micd.tiers.disk import files
from micd.tiers.disk.layout import Layout
from micd.tiers.disk.lru import Entry

__all__ = ["ATIME_SLACK_NS", "BACKGROUND_BATCH", "Outcome", "check_and_unlink", "low_water"]

_JUDGE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY)  # O_PATH: no read access needed, never touches the atime
ATIME_SLACK_NS = 2 * 10**9
"""A file atime this much newer than our record means someone else read it (filesystem timestamp jitter)."""

BACKGROUND_BATCH = 256
"""Victims per thread call of a background pass (~0.4 s of unlinks measured at 2,100 files in 3 s): the most
a write needing the hard cap's room waits for the pass to let it in."""


class Outcome(Enum):
    DELETED = "deleted"
    GONE = "gone"  # already removed, e.g. evicted by another process
    USED = "used"  # read by another process since we last saw it, or published there again: keep


def low_water(soft_cap: int) -> int:
    """Where an eviction pass stops: 90% of the soft cap, so a pass (started when usage crosses the soft cap)
    frees room ahead of the next writes rather than evicting per write."""
    return soft_cap - soft_cap // 10


def check_and_unlink(
    layout: Layout, victims: list[tuple[str, Entry]], area: Path
) -> list[tuple[str, Outcome, int]]:
    """Delete each victim unless recently used elsewhere (blocking). Returns (key, outcome, file atime).

    Deleted through `files.unlink_if_same` (via our temp area `area`), so a file another process published
    at the victim's name after we judged it is kept.
    """
    out: list[tuple[str, Outcome, int]] = []
    for key, entry in victims:
        try:
            fd = os.open(layout.key_path(key), _JUDGE_FLAGS)
        except FileNotFoundError:
            out.append((key, Outcome.GONE, 0))
            continue
        try:  # held open until decided, so its inode number cannot be reused meanwhile
            st = os.fstat(fd)
            if st.st_atime_ns > entry.atime_ns + ATIME_SLACK_NS:
                out.append((key, Outcome.USED, st.st_atime_ns))
                continue
            taken = files.unlink_if_same(layout.key_path(key), area, files.Sig.of(st), st.st_atime_ns)
        finally:
            os.close(fd)
        if taken is None:
            out.append((key, Outcome.GONE, 0))
        else:
            removed, there = taken
            out.append((key, Outcome.DELETED if removed else Outcome.USED, there.st_atime_ns))
    return out
