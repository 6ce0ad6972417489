"""`IndexState`, the index side of `DiskTier`: this process's LRU view of the shared root, reservations under
the hard cap, eviction, rescans for other processes' writes, and index snapshots.

A base class so that `store.py` stays about reading and writing files; the rules these methods implement
(caps, sharing a root with other daemons) are described in the `store.py` docstring.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path

from micd.errors import StoreFull
from micd.tiers.disk import evict, files, index, journal
from micd.tiers.disk.layout import Layout
from micd.tiers.disk.lru import Lru

__all__ = ["IndexState"]

log = logging.getLogger(__name__)

_SNAPSHOT_EVERY_NS = 300 * 10**9
_SNAPSHOT_AFTER_CHANGES = 10_000
_RESCAN_EVERY_NS = 60 * 10**9


class IndexState:
    """LRU, reservations, counters and the eviction lock of one disk tier instance."""

    def __init__(self, layout: Layout, *, soft_cap: int, hard_cap: int) -> None:
        self.layout = layout
        self.soft_cap = soft_cap
        self.hard_cap = hard_cap
        self.corruptions = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self._lru = Lru()
        self._reserved = 0
        self._verified: dict[str, files.Sig] = {}
        self._area: files.TempArea | None = None
        self._evict_lock = asyncio.Lock()
        self._changes = 0
        self._snapshot_at = 0
        self._scanned_at = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._evictor: asyncio.Task[None] | None = None

    @property
    def used_bytes(self) -> int:
        """Bytes of published blobs and records this process knows of (see `refresh`)."""
        return self._lru.used

    @property
    def entry_count(self) -> int:
        """Number of blobs and records this process knows of."""
        return len(self._lru)

    def stats(self) -> dict[str, int]:
        """Gauges and counters for `mic stats` and /metrics."""
        return {
            "used_bytes": self.used_bytes,
            "reserved_bytes": self._reserved,
            "entries": self.entry_count,
            "corruptions": self.corruptions,
            "evictions": self.evictions,
            "evicted_bytes": self.evicted_bytes,
            "soft_cap": self.soft_cap,
            "hard_cap": self.hard_cap,
        }

    def _temp_area(self) -> files.TempArea:
        if self._area is None:
            raise RuntimeError("DiskTier is not open")
        return self._area

    def _seen(self, key: str, size: int) -> None:
        now = time.time_ns()
        if not self._lru.touch(key, now):
            self._lru.add(key, size, now)
            self._changes += 1

    def _forget(self, key: str) -> None:
        if self._lru.remove(key) is not None:
            self._changes += 1
        self._verified.pop(key, None)

    async def _discard_corrupt(self, key: str, path: Path, sig: files.Sig) -> None:
        """Count and forget a corrupt file, and delete it unless another process replaced it meanwhile."""
        self.corruptions += 1
        self._forget(key)
        if self._area is not None:  # closed: the next read finds it corrupt again
            await asyncio.to_thread(files.unlink_if_same, path, self._area.path, sig)

    def _reserve_now(self, size: int) -> bool:
        """Reserve `size` without awaiting if no rescan is due and it fits as is; False means use `_reserve`."""
        if time.monotonic_ns() - self._scanned_at > _RESCAN_EVERY_NS:
            return False
        if self._lru.used + self._reserved + size > self.hard_cap:
            return False
        self._reserved += size
        return True

    async def _reserve(self, size: int) -> None:
        """Reserve `size` bytes under the hard cap, evicting LRU entries if (and only if) that makes room."""
        if time.monotonic_ns() - self._scanned_at > _RESCAN_EVERY_NS:
            await self.refresh()  # our byte count misses other processes' writes until we look
        if self._lru.used + self._reserved + size > self.hard_cap:
            if self._reserved + size > self.hard_cap:
                raise StoreFull(self._lru.used + self._reserved, size, self.hard_cap)
            async with self._evict_lock:
                await self._evict_to(self.hard_cap - self._reserved - size)
            if self._lru.used + self._reserved + size > self.hard_cap:
                raise StoreFull(self._lru.used + self._reserved, size, self.hard_cap)
        self._reserved += size

    def _after_write(self, written: str) -> None:
        """Count a write; past the soft cap, start a background eviction pass (never waited for here)."""
        self._changes += 1
        if self._lru.used > self.soft_cap and self._evictor is None and self._area is not None:
            self._evictor = asyncio.create_task(self._evict_in_background(written))
        self._maybe_snapshot()

    async def _evict_in_background(self, written: str) -> None:
        """Evict down to the low-water mark in batches of `evict.BACKGROUND_BATCH` victims, taking the lock
        per batch: a write that needs the hard cap's room waits for one batch at most, not for the pass.
        Never the entry that started the pass: a blob above the soft cap would vanish as it lands."""
        target = evict.low_water(self.soft_cap)
        try:
            while self._lru.used > target and self._area is not None:
                async with self._evict_lock:
                    if not await self._evict_round(target, {written}, evict.BACKGROUND_BATCH):
                        break
        except Exception:  # a failed pass leaves the next write to start another
            log.exception("background eviction in %s failed", self.layout.root)
        finally:
            self._evictor = None

    async def settled(self) -> None:
        """Wait until no background eviction pass runs (for `close` and for tests)."""
        while self._evictor is not None:
            await asyncio.shield(self._evictor)

    async def evict(self, target: int | None = None) -> int:
        """Evict least recently used entries down to `target` bytes (default: 90% of the soft cap) now;
        returns the bytes freed."""
        async with self._evict_lock:
            before = self.evicted_bytes
            await self._evict_to(evict.low_water(self.soft_cap) if target is None else target)
            return self.evicted_bytes - before

    def _clean_dead_temp(self) -> None:
        """Replay and remove the temp areas of dead writers (blocking)."""
        files.clean_dead_temp(self.layout.tmp, functools.partial(journal.replay, layout=self.layout))

    async def refresh(self) -> None:
        """Reconcile the index with the files: restore what dead writers' journals acknowledged, count other
        processes' writes, drop what they evicted."""
        self._scanned_at = time.monotonic_ns()
        await asyncio.to_thread(self._clean_dead_temp)
        known = {key: size for key, (size, _) in self._lru.items()}
        new, gone, resized = await asyncio.to_thread(index.scan_changes, self.layout, known)
        for key in gone:
            self._forget(key)
        for key, size in resized.items():
            self._lru.resize(key, size)
        for key, entry in new.items():
            if key not in self._lru:
                self._lru.add(key, entry.size, entry.atime_ns)
                self._changes += 1

    async def _evict_to(self, target: int) -> None:
        for _ in range(16):  # bounded: each round deletes, forgets or re-ranks every victim it looks at
            if not await self._evict_round(target):
                break

    async def _evict_round(
        self, target: int, skip: frozenset[str] | set[str] = frozenset(), limit: int | None = None
    ) -> bool:
        """Check and evict (up to `limit`) victims that bring usage to `target`; False if there were none."""
        victims = self._lru.victims(max(target, 0), skip=skip)[:limit]
        if not victims:
            return False
        for key, outcome, atime in await asyncio.to_thread(
            evict.check_and_unlink, self.layout, victims, self._temp_area().path
        ):
            if outcome is evict.Outcome.USED:
                self._lru.touch(key, atime)
                continue
            entry = self._lru.remove(key)
            self._verified.pop(key, None)
            self._changes += 1
            if outcome is evict.Outcome.DELETED and entry is not None:
                self.evictions += 1
                self.evicted_bytes += entry.size
        return True

    def _maybe_snapshot(self) -> None:
        due = time.monotonic_ns() - self._snapshot_at > _SNAPSHOT_EVERY_NS
        many = self._changes >= _SNAPSHOT_AFTER_CHANGES
        if self._snapshot_task is None and self._changes and (due or many):
            self._snapshot_task = asyncio.create_task(self._save_snapshot())

    async def _save_snapshot(self) -> None:
        try:
            self._changes = 0
            self._snapshot_at = time.monotonic_ns()
            entries = list(self._lru.items())
            await asyncio.to_thread(index.save_snapshot, self.layout, entries, self._temp_area().path)
        finally:
            self._snapshot_task = None
