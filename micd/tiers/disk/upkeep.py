"""`IndexState`, the index side of `DiskTier`: this process's LRU view of the shared root, reservations under
the hard cap (against the root's usage ledger, `usage.py`), eviction, rescans for other processes' writes, and
index snapshots.

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
from micd.tiers.disk import evict, files, index, journal, usage
from micd.tiers.disk.ingest import FilesystemFull
from micd.tiers.disk.layout import KV, Layout
from micd.tiers.disk.lru import Lru

__all__ = ["IndexState"]

log = logging.getLogger(__name__)

_SNAPSHOT_EVERY_NS = 300 * 10**9
_SNAPSHOT_AFTER_CHANGES = 10_000
_RESCAN_EVERY_NS = 60 * 10**9
_LEASE_MAX = 8 << 20
"""Headroom claimed beyond a write's need (at most 1/64 of the hard cap): most writes then reserve without
touching the ledger file; the cost is that much of the cap held idle per daemon."""


class IndexState:
    """LRU, reservations, counters and the eviction lock of one disk tier instance.

    Cap accounting: `_claim` is this daemon's row in the root's usage ledger, covering `_reserved` (writes in
    flight), `_journal_claimed` (journal segments) and `_unsynced` (the net bytes it published minus those it
    deleted, not yet moved into the ledger's `used`); the rest is headroom that small writes reserve from
    without a ledger call (`_reserve_now`). Each ledger call (`_exchange`) moves `_unsynced` and sets the
    claim.
    """

    def __init__(self, layout: Layout, *, soft_cap: int, hard_cap: int) -> None:
        self.layout = layout
        self.soft_cap = soft_cap
        self.hard_cap = hard_cap
        self.corruptions = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self._lru = Lru()
        self._reserved = 0
        self._area: files.TempArea | None = None
        self._evict_lock = asyncio.Lock()
        self._changes = 0
        self._snapshot_at = 0
        self._scanned_at = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._evictor: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._ledger: usage.Ledger | None = None
        self._ledger_lock = asyncio.Lock()
        self._claim = 0
        self._journal_claimed = 0
        self._unsynced = 0
        self._root = usage.View(0, 0, 0, 0, None)
        self._lease = min(_LEASE_MAX, hard_cap // 64)

    @property
    def root_used_bytes(self) -> int:
        """Bytes of published blobs and records of all daemons sharing the root (as of our last ledger call)."""
        return max(self._root.used, 0) + self._unsynced

    @property
    def used_bytes(self) -> int:
        """Bytes of published blobs and records this process knows of (see `refresh`)."""
        return self._lru.used

    @property
    def entry_count(self) -> int:
        """Number of blobs and records this process knows of."""
        return len(self._lru)

    def stats(self) -> dict[str, int]:
        """Gauges and counters for `mic stats` and /metrics. Used (published files) and reserved apart:
        `used_bytes` is what this process knows of, `reserved_bytes` its writes in flight, `journal_bytes` its
        journal segments; `root_*` cover every daemon sharing the root (claimed: in flight, journals and
        headroom)."""
        return {
            "used_bytes": self.used_bytes,
            "reserved_bytes": self._reserved,
            "journal_bytes": self._journal_claimed,
            "root_used_bytes": self.root_used_bytes,
            "root_claimed_bytes": self._root.others + self._claim,
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

    async def _discard_corrupt(self, key: str, path: Path, sig: files.Sig) -> None:
        """Count and forget a corrupt file, and delete it unless another process replaced it meanwhile."""
        self.corruptions += 1
        self._forget(key)
        if self._area is not None:  # closed: the next read finds it corrupt again
            taken = await asyncio.to_thread(files.unlink_if_same, path, self._area.path, sig)
            if taken is not None and taken[0]:
                self._unsynced -= taken[1].st_size

    def _reserve_now(self, size: int) -> bool:
        """Reserve `size` from our claim's headroom, without awaiting, if no rescan or ledger call is due or
        running; False means use `_reserve`."""
        if time.monotonic_ns() - self._scanned_at > _RESCAN_EVERY_NS or self._ledger_lock.locked():
            return False
        if self._reserved + self._journal_claimed + self._unsynced + size > self._claim:
            return False
        self._reserved += size
        return True

    async def _reserve(self, size: int) -> None:
        """Reserve `size` bytes under the hard cap, which covers every daemon sharing the root. Short of room,
        dead daemons' claims are dropped first, then LRU entries evicted if (and only if) that makes room.

        Raises:
            StoreFull: no room, even after that (nothing was evicted if eviction could not make room).
        """
        try:
            await self._reserve_or_evict(size)
        except OSError as exc:  # the ledger file could not be written
            if exc.errno in files.FULL_ERRNOS:
                raise FilesystemFull(
                    self.layout.root, self.root_used_bytes, size, self.hard_cap, exc.strerror or "",
                    reserved=self._root.others + self._claim,
                ) from exc  # fmt: skip
            raise

    async def _reserve_or_evict(self, size: int) -> None:
        if time.monotonic_ns() - self._scanned_at > _RESCAN_EVERY_NS:
            await self.refresh()  # corrects the ledger's count of files (crashed daemons, removals by hand)
        if self._reserve_now(size):
            return
        view = await self._exchange((size + self._lease, size), reserve=size)
        if view.granted is None:
            await asyncio.to_thread(self._clean_dead_temp)
            view = await self._exchange((size,), reserve=size, prune=True)
        if view.granted is None:
            short = max(view.used, 0) + view.others + view.claimed + size - self.hard_cap
            if short > self._lru.used:
                raise self._full(view, size)
            async with self._evict_lock:
                await self._evict_to(self._lru.used - short)
            view = await self._exchange((size,), reserve=size)
            if view.granted is None:
                raise self._full(view, size)

    def _release(self, size: int) -> None:
        """End a reservation (the write published, failed or was cancelled). Headroom left idle beyond two
        leases (a cancelled large upload) goes back to the ledger in the background: others may need it."""
        self._reserved -= size
        idle = self._claim - self._reserved - self._journal_claimed - self._unsynced
        if idle > 2 * self._lease and self._trimmer is None and self._area is not None:
            self._trimmer = asyncio.create_task(self._trim())

    async def _trim(self) -> None:
        try:
            await self._exchange()
        except Exception:  # the next ledger call trims instead
            log.exception("could not give idle headroom back to the ledger in %s", self.layout.root)
        finally:
            self._trimmer = None

    def _full(self, view: usage.View, size: int) -> StoreFull:
        return StoreFull(max(view.used, 0), size, self.hard_cap, reserved=view.others + view.claimed)

    async def _exchange(
        self, wants: tuple[int, ...] = (), *, reserve: int = 0, prune: bool = False
    ) -> usage.View:
        """One ledger call (`usage.Ledger.exchange`): move `_unsynced` into the root's count and claim what we
        hold plus the first of `wants` that fits, reserving `reserve` of it at once if one did (before any
        other write can take it). Runs to the end even if the caller is cancelled, so the ledger and our
        counters always agree (a reservation made for a cancelled caller is released); `_reserve_now` waits
        meanwhile (its headroom is being set)."""

        async def locked() -> usage.View:
            async with self._ledger_lock:
                if self._ledger is None:
                    raise RuntimeError("DiskTier is not open")
                change, hold = self._unsynced, self._reserved + self._journal_claimed
                if reserve and not prune and hold + change + reserve <= self._claim:
                    self._reserved += reserve  # the call we waited for left room enough: no second one
                    return self._root._replace(granted=reserve)
                view = await asyncio.to_thread(
                    self._ledger.exchange, change, hold, wants, self.hard_cap, prune=prune
                )
                # Meanwhile writes only ended (no new reservation: the lock), so `hold` still covers them.
                self._unsynced -= change
                self._claim, self._root = view.claimed, view
                if view.granted is not None:
                    self._reserved += reserve
                return view

        done = asyncio.ensure_future(locked())
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            done.add_done_callback(functools.partial(self._release_orphan_grant, reserve))
            raise

    def _release_orphan_grant(self, reserve: int, done: asyncio.Future[usage.View]) -> None:
        if not done.cancelled() and done.exception() is None and done.result().granted is not None:
            self._release(reserve)

    def _wrote(self, key: str, size: int) -> None:
        """Count a file we published (a record replacing its old version frees that version's bytes)."""
        old = self._lru.get(key) if key.startswith(f"{KV}/") else None
        self._unsynced += size - (old.size if old is not None else 0)
        self._lru.add(key, size, time.time_ns())

    def _after_write(self, written: str) -> None:
        """Count a write; with the root past the soft cap, start a background eviction pass (never waited
        for here)."""
        self._changes += 1
        if self.root_used_bytes > self.soft_cap and self._evictor is None and self._area is not None:
            self._evictor = asyncio.create_task(self._evict_in_background(written))
        self._maybe_snapshot()

    async def _evict_in_background(self, written: str) -> None:
        """Evict down to the low-water mark (the root's usage) in batches of `evict.BACKGROUND_BATCH` victims,
        taking the lock per batch: a write that needs the hard cap's room waits for one batch at most, not for
        the pass. Never the entry that started the pass: a blob above the soft cap would vanish as it lands.
        Then one ledger call tells the other daemons (and trims our idle headroom)."""
        target = self._lru.used - (self.root_used_bytes - evict.low_water(self.soft_cap))
        try:
            while self._lru.used > target and self._area is not None:
                async with self._evict_lock:
                    if not await self._evict_round(target, {written}, evict.BACKGROUND_BATCH):
                        break
            if self._area is not None:
                await self._exchange()
        except Exception:  # a failed pass leaves the next write to start another
            log.exception("background eviction in %s failed", self.layout.root)
        finally:
            self._evictor = None

    async def settled(self) -> None:
        """Wait until no background eviction pass runs (for `close` and for tests)."""
        while self._evictor is not None:
            await asyncio.shield(self._evictor)

    async def evict(self, target: int | None = None) -> int:
        """Evict least recently used entries down to `target` bytes (default: 90% of the soft cap) now, and
        tell the other daemons (one ledger call); returns the bytes freed."""
        async with self._evict_lock:
            before = self.evicted_bytes
            await self._evict_to(evict.low_water(self.soft_cap) if target is None else target)
        await self._exchange()
        return self.evicted_bytes - before

    def _clean_dead_temp(self) -> None:
        """Replay and remove the temp areas of dead writers (blocking)."""
        files.clean_dead_temp(self.layout.tmp, functools.partial(journal.replay, layout=self.layout))

    async def refresh(self) -> None:
        """Reconcile the index with the files: restore what dead writers' journals acknowledged, count other
        processes' writes, drop what they evicted; then set the ledger's count of the root's files from
        ours."""
        self._scanned_at = time.monotonic_ns()
        await asyncio.to_thread(self._clean_dead_temp)
        since = (await self._exchange()).applied
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
        if self._ledger is not None:  # our writes since `since` are in `_unsynced`: the next call adds them
            await asyncio.to_thread(self._ledger.recount, self._lru.used - self._unsynced, since)

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
            self._changes += 1
            if outcome is evict.Outcome.DELETED and entry is not None:
                self.evictions += 1
                self.evicted_bytes += entry.size
                self._unsynced -= entry.size
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
