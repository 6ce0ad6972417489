"""Pure LRU bookkeeping for the disk tier: index key → (size, last access), oldest first. No I/O.

The LRU only orders and counts; the files decide what exists. A process's LRU is its own view of a root
shared with other processes, so eviction re-checks each victim on disk before deleting it (`evict.py`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["Entry", "Lru", "Marked"]


class Entry(NamedTuple):
    size: int
    atime_ns: int
    """Last access as this process knows it (wall clock ns, comparable with a file's st_atime_ns)."""


class Lru:
    """Ordered map key → Entry, least recently used first, with a running byte total."""

    def __init__(
        self, entries: Iterable[tuple[str, tuple[int, int]]] = (), *, used: int | None = None
    ) -> None:
        """Build from (key, (size, atime_ns)) pairs in LRU order (oldest first); later duplicates win.

        `used` may pass the size total when the caller already has it (reopen speed); see `recount`.
        """
        # Values are plain tuples: building 100k NamedTuples costs more than the rest of a reopen.
        self._entries: OrderedDict[str, tuple[int, int]] = OrderedDict(entries)
        self.used = self.recount() if used is None else used

    def recount(self) -> int:
        """The byte total recomputed from the entries (also stored as `used`)."""
        self.used = sum([entry[0] for entry in self._entries.values()])
        return self.used

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        return None if entry is None else Entry(*entry)

    def keys(self) -> list[str]:
        """A copy of the keys, oldest first."""
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """Entries oldest first (a snapshot-safe copy is the caller's job if it mutates meanwhile)."""
        return iter(self._entries.items())

    def add(self, key: str, size: int, atime_ns: int) -> bool:
        """Insert or refresh `key` as most recently used; True if it was new."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= old[0]
        self._entries[key] = (size, atime_ns)
        self.used += size
        return old is None

    def touch(self, key: str, atime_ns: int) -> bool:
        """Mark `key` used now (moves it to the most recent end); False if unknown."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._entries[key] = (entry[0], max(atime_ns, entry[1]))
        self._entries.move_to_end(key)
        return True

    def resize(self, key: str, size: int) -> bool:
        """Correct the size of `key` in place (its recency unchanged); False if unknown."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self.used += size - entry[0]
        self._entries[key] = (size, entry[1])
        return True

    def remove(self, key: str) -> Entry | None:
        """Forget `key`; returns its entry, or None if it was unknown."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.used -= entry[0]
        return Entry(*entry)

    def victims(
        self, target: int, *, skip: frozenset[str] | set[str] = frozenset()
    ) -> list[tuple[str, Entry]]:
        """Oldest entries whose removal brings `used` to ≤ `target`, oldest first, skipping `skip`.

        Nothing is removed: the caller checks each victim on disk and then calls `remove` or `touch`.
        """
        excess = self.used - target
        out: list[tuple[str, Entry]] = []
        if excess <= 0:
            return out
        for key, entry in self._entries.items():
            if key in skip:
                continue
            out.append((key, Entry(*entry)))
            excess -= entry[0]
            if excess <= 0:
                break
        return out


class Marked:
    """Keys whose file this process saw or made used (atime) within the last `window_ns`: `find_missing` need
    not stat them again. Two generations, each one half-window epoch, so memory holds one window's keys.

    Not the LRU's access times: those also record index loads and rescans, which write no atime."""

    def __init__(self, window_ns: int) -> None:
        self._half = max(1, window_ns // 2)
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._epoch = 0

    def __contains__(self, key: object) -> bool:
        return key in self._current or key in self._previous

    def rotate(self, now_ns: int) -> None:
        """Forget keys marked before the previous epoch: a known key was marked less than a window ago."""
        epoch = now_ns // self._half
        if epoch != self._epoch:
            self._previous = self._current if epoch == self._epoch + 1 else set()
            self._current, self._epoch = set(), epoch

    def add(self, keys: Iterable[str]) -> None:
        self._current.update(keys)
