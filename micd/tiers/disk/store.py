"""`DiskTier`: the CAS and KV on local disk under a cache root shared by all of a user's daemons.

Files are the truth, the in-memory index a cache of them: existence is always answered by the filesystem
(one `access` call, never a body read), so a blob written by another process is found and one evicted by another process
is a miss. The index carries sizes for the caps and last-access order for LRU eviction (see `index.py`).

Caps: they cover the whole root, shared by every daemon of the user, and all its disk use: published files,
journal segments and in-flight temp files. A write reserves `digest.size` before its first byte, and the
journal claims each segment before creating it; both come out of this daemon's claim in the root's usage
ledger (`usage.py`), which is granted only while all daemons' files and claims together stay under the hard
cap. Most small writes reserve from headroom the claim already holds, with no ledger call. Short of room,
dead daemons' claims are dropped, then least recently used entries evicted, but only when that can
succeed; otherwise `StoreFull` (bytes used and reserved apart) is raised before anything changes: the only
eviction a request ever waits for. A write that takes the root above the soft cap starts a background pass
that evicts down to 90% of it (`upkeep`), ahead of need. A real ENOSPC/EDQUOT is `StoreFull` too. Each
daemon evicts from what it knows of (its index; other daemons' files join at a rescan, at most a minute
apart, which also corrects the ledger's count of files).

Writes: every blob is verified and durable before the call returns, so an acknowledged blob survives a crash
and a visible name holds verified bytes (or, after a power loss, bytes that fail verification on read and
that the journal replay restores at the next open). Streamed blobs and records are written to a temp file,
fsynced and renamed into place. Blobs up to `_FAST_MAX` whose bytes are in memory take the fast path, group
commit (`journal.py`): concurrent small puts (one BatchUpdate's blobs, or many calls at once) are verified,
appended to this instance's journal with ONE fdatasync, then published (an unnamed temp file linked into
place, `files.publish_unsynced`) without an fsync each. That replaced an fsync per file, which bounded
small writes at the filesystem's fsync rate (~700 files/s from one thread on the dev VM); journal segments
are recycled after a background `syncfs`.
Blocking work runs on the group commit's own threads, not asyncio's default pool, so writes never starve
reads queued there.

Reads: blobs up to `verify_limit` are read whole and verified before any byte is served (mismatch: the file
is deleted, counted, and the read is a miss). Larger blobs go out through `FileBlob`, streamed or by
sendfile, which hashes the whole file on every read and withholds the last part until it matched (see
`blob.py`). Reads bump the file's atime at most once a minute so other processes' eviction sees the use.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from micd.blobs import BytesBlob, DigestBuilder, Hashing, Verifier, aiter_bytes, clamp_range
from micd.budget import ByteBudget
from micd.errors import StoreFull
from micd.record import decode_record, encode_record
from micd.store import EMPTY_HEX, Digest, Record
from micd.tiers.disk import files, index, usage
from micd.tiers.disk.blob import FileBlob
from micd.tiers.disk.ingest import WRITE_BATCH, FilesystemFull, Pipeline, collect
from micd.tiers.disk.journal import RECORD_OVERHEAD, GroupCommit, Journal
from micd.tiers.disk.kvfile import decode_kv_file, encode_kv_file
from micd.tiers.disk.layout import Layout, blob_key, check_kv_name, kv_key
from micd.tiers.disk.lru import Marked
from micd.tiers.disk.upkeep import IndexState
from mickernel.errors import FormatError, IntegrityError

__all__ = ["DiskTier", "FilesystemFull"]

_FAST_MAX = 1 << 20  # blobs up to this size are group-committed through the journal
_GROW_MIN, _GROW_MAX = 1 << 20, 64 << 20  # reservation steps for a body of unknown size (`_put_computed`)

_T = TypeVar("_T")


async def _completing(work: Awaitable[_T], on_orphan: Callable[[_T], object]) -> _T:
    """Await `work`, which goes on to the end even if the awaiting task is cancelled (a thread's job, a group
    commit): then `on_orphan` gets its result once it is done, on the event loop, so it must be quick.

    Why: a cancelled await (a client disconnecting) cannot stop a thread, so what it creates (an fd, a temp
    file) would leak and what it publishes would go uncounted (usage and LRU wrong until the next rescan).
    """
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: _release_orphan(done, on_orphan))
        raise


async def _to_thread_owned(make: Callable[[], _T], release: Callable[[_T], object]) -> _T:
    """`await asyncio.to_thread(make)` for a `make` that creates a resource (an fd, a temp file), which
    `release` gets if the caller was cancelled (`_completing`)."""
    return await _completing(asyncio.get_running_loop().run_in_executor(None, make), release)


def _release_orphan(done: asyncio.Future, release: Callable[[_T], object]) -> None:
    """Hand what finished for a cancelled caller to `release` (nothing if it failed)."""
    if not done.cancelled() and done.exception() is None:
        release(done.result())


def _close_opened(opened: tuple[int, os.stat_result] | None) -> None:
    if opened is not None:
        os.close(opened[0])


class DiskTier(IndexState):
    """Disk CAS + KV under `root` (the caller resolves `$XDG_CACHE_HOME/mic/store` or `MIC_CACHE_DIR`)."""

    def __init__(
        self,
        root: Path,
        *,
        soft_cap: int,
        hard_cap: int,
        verify_limit: int = 4 << 20,
        journal_segment_bytes: int = 16 << 20,
        journal_segments: int = 4,
        ingest_budget: int = 64 << 20,
    ) -> None:
        if not 0 < soft_cap <= hard_cap:
            raise ValueError(f"disk caps must satisfy 0 < soft_cap ≤ hard_cap (got {soft_cap}, {hard_cap})")
        if verify_limit < 0:
            raise ValueError(f"verify_limit must be ≥ 0 (got {verify_limit})")
        if ingest_budget <= 0:
            raise ValueError(f"ingest_budget must be > 0 (got {ingest_budget})")
        super().__init__(Layout(root), soft_cap=soft_cap, hard_cap=hard_cap)
        self.verify_limit = verify_limit
        # Segments count against the hard cap (claimed as the journal needs them): at most 1/64 of it each.
        segment_bytes = min(journal_segment_bytes, hard_cap // 64)
        self._journal_shape = (segment_bytes, journal_segments)
        self._small_max = min(_FAST_MAX, segment_bytes - RECORD_OVERHEAD)  # ≤ 0: no group commit
        self._journal: Journal | None = None
        self._commit: GroupCommit | None = None
        self._marked = Marked(files.TOUCH_EVERY_NS)
        self._budget = ByteBudget(ingest_budget)
        self._batch_bytes = min(WRITE_BATCH, max(1, ingest_budget // 4))

    # -- lifecycle and stats -----------------------------------------------------------------------
    async def open(self) -> None:
        """Create the layout, remove dead writers' temp files, and load the index (reconciled with files)."""
        await asyncio.to_thread(self._open_blocking)
        segment_bytes, segments = self._journal_shape
        area = self._temp_area()
        self._journal = Journal(
            area.path, self.layout.root, segment_bytes=segment_bytes, max_segments=segments
        )
        self._journal.allow(0)  # each segment is claimed under the hard cap first (`_journal_room`)
        self._commit = GroupCommit(self._journal, area)

    def _open_blocking(self) -> None:
        self.layout.make_dirs()
        self._clean_dead_temp()
        self._area = files.TempArea(self.layout.tmp)
        self._ledger = usage.Ledger(
            self.layout.usage, self._area.path.name, partial(files.is_alive, self.layout.tmp)
        )
        before = self._ledger.exchange(0, 0, (), self.hard_cap, prune=True)
        self._lru, valid = index.load_index(self.layout)
        if not before.others:  # nobody holds unpublished counts: our listing is the exact count of the root
            self._ledger.recount(self._lru.used, before.applied)
        self._root = self._ledger.exchange(0, 0, (), self.hard_cap)
        self._snapshot_at = self._scanned_at = time.monotonic_ns()
        if not valid:
            index.save_snapshot(self.layout, self._lru.items(), self._area.path)

    async def close(self) -> None:
        """Save the index snapshot and release the temp area. Blobs and records stay."""
        if self._area is None:
            return
        if self._snapshot_task is not None:
            await self._snapshot_task
        area, self._area = self._area, None  # also stops a background eviction pass after its batch
        await self.settled()
        if self._commit is not None:  # let in-flight small writes finish before their temp dir goes
            await self._commit.close()
            self._commit = None
        if self._journal is not None:  # syncfs: what the journal covered is durable without it
            await asyncio.to_thread(self._journal.close)
            self._journal = None
        if self._trimmer is not None:
            await self._trimmer
        if self._ledger is not None:
            async with self._ledger_lock:
                ledger, self._ledger = self._ledger, None
                await asyncio.to_thread(ledger.leave, self._unsynced)
            self._unsynced = self._claim = self._journal_claimed = 0
        entries = list(self._lru.items())
        await asyncio.to_thread(index.save_snapshot, self.layout, entries, area.path)
        await asyncio.to_thread(area.release)

    def stats(self) -> dict[str, int]:
        """`IndexState.stats` plus the upload memory budget: bytes held, writes waiting for it."""
        budget = self._budget
        return {**super().stats(), "ingest_held_bytes": budget.held, "ingest_waiting": budget.waiting}

    # -- CAS reads ---------------------------------------------------------------------------------
    async def contains(self, digest: Digest) -> bool:
        """True if the blob's file exists now (one stat)."""
        return not await self.find_missing([digest])

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Absent digests in input order: one existence check each (all in one thread call), no body read;
        present ones count as used, here (LRU) and for other processes (the file's atime, as a read would set
        it: `files.mark_used`), so no other daemon evicts a blob just reported present. Per digest: a string
        path, an `access` call, an LRU touch; a stat (and maybe an atime write) only for a present file not
        marked used by this process within `TOUCH_EVERY_NS` (`self._marked`)."""
        wanted = [d for d in digests if d.size or not d.is_empty]  # `d.size or`: no call in the common case
        if not wanted:
            return []
        cas = self.layout.cas_prefix  # `Layout.blob_file` inlined: this list is built per call of 1,000s
        paths = [f"{cas}{d.function}/{d.hex[:2]}/{d.hex}.{d.size}" for d in wanted]
        keys = [f"{d.function}/{d.hex}.{d.size}" for d in wanted]  # blob_key, inlined: this loop is hot
        now = time.time_ns()
        marked = self._marked
        marked.rotate(now)
        unmarked = [i for i, key in enumerate(keys) if key not in marked]
        present = await asyncio.to_thread(files.exists_all, paths, unmarked, now)
        marked.add([keys[i] for i in unmarked if present[i]])
        lru = self._lru
        missing = []
        for digest, key, here in zip(wanted, keys, present, strict=True):
            if here:
                if not lru.touch(key, now):
                    lru.add(key, digest.size, now)  # written by another process
                    self._changes += 1
            else:
                if key in lru:  # known to us, gone from disk (e.g. evicted by another daemon)
                    self._forget(key)
                missing.append(digest)
        return missing

    async def resolve(self, function: str, hex_: str) -> Digest | None:
        """The digest named by the blob file of this hash, found by listing its shard directory (the index is
        keyed by the whole digest), so a blob another daemon published is found too. A found blob counts as
        used, as in `find_missing`."""
        if hex_ == EMPTY_HEX[function]:
            return Digest.empty(function)
        sizes = await asyncio.to_thread(index.blob_sizes, self.layout, function, hex_)
        # A size-0 name with this (non-empty) hash names nothing that can exist.
        found = [Digest(function, hex_, size) for size in sizes if size]
        if not found:
            return None
        missing = await self.find_missing(found)  # marks it used; a file deleted meanwhile is a miss
        return next((digest for digest in found if digest not in missing), None)

    async def get(
        self, digest: Digest, offset: int = 0, limit: int | None = None
    ) -> BytesBlob | FileBlob | None:
        """Open a verified range of the blob, or None (absent, or found corrupt and deleted)."""
        if digest.is_empty:
            return BytesBlob(b"", offset, limit)
        key, path = blob_key(digest), self.layout.blob_path(digest)
        if digest.size <= self.verify_limit:
            clamp_range(digest.size, offset, limit)
            result = await asyncio.to_thread(files.read_small, path, digest)
            if result is None:
                self._forget(key)
                return None
            st, data, ok = result
            if not ok:
                await self._discard_corrupt(key, path, files.Sig.of(st))
                return None
            self._seen(key, digest.size)
            return BytesBlob(data, offset, limit)
        length = clamp_range(digest.size, offset, limit)
        opened = await _to_thread_owned(lambda: files.open_large(path), _close_opened)
        if opened is None:
            self._forget(key)
            return None
        fd, st = opened
        sig = files.Sig.of(st)
        if st.st_size != digest.size:
            try:  # discarded while still open: its inode number cannot be reused meanwhile
                await self._discard_corrupt(key, path, sig)
            finally:
                await asyncio.to_thread(os.close, fd)
            return None
        self._seen(key, digest.size)

        async def corrupt() -> None:  # called while FileBlob still holds the fd open
            await self._discard_corrupt(key, path, sig)

        return FileBlob(fd, digest, offset, length, on_corrupt=corrupt)

    async def get_bytes(self, digest: Digest) -> bytes | None:
        """The whole blob in memory (small blobs only), or None."""
        blob = await self.get(digest)
        if blob is None:
            return None
        if isinstance(blob, BytesBlob):
            return await blob.read_all()
        try:
            return b"".join([chunk async for chunk in blob.chunks()])
        except IntegrityError:
            return None  # nothing was served yet, so a detected corruption is a plain miss here

    async def get_many_bytes(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """`get_bytes` for each digest, concurrently (each read is its own worker-thread call)."""
        return list(await asyncio.gather(*(self.get_bytes(d) for d in digests)))

    # -- CAS writes --------------------------------------------------------------------------------
    async def put(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        """Stream to a temp file while hashing; publish by rename only if digest and size match.

        A small blob (≤ `_FAST_MAX`) is gathered in memory and group-committed (`_put_small`) once it gets
        memory budget (it waits in line with streamed batches: back-pressure) and room under the hard cap;
        without that room it streams like a large one. Waiting beats streaming it at once: a streamed blob
        waits for budget all the same, then costs an fsync of its own (a PUT p99 of ~3 s instead of ~1.9 s
        under 200 clients, bench/RESULTS.md).

        Raises:
            IntegrityError: the bytes do not match `digest` (nothing stored, temp file removed).
            StoreFull: no room under the hard cap, or the filesystem is full (`FilesystemFull`).
        """
        size = digest.size
        if 0 < size <= self._small_max:
            await self._budget.take(size)
            try:
                if await self._reserve_small(size):
                    try:
                        data = await collect(digest, chunks)
                    except BaseException:
                        self._release(size)
                        raise
                    await self._put_small(digest, data)
                    return
            finally:
                self._budget.give(size)
        await self._put_streaming(digest, chunks)

    async def _put_streaming(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        key, path = blob_key(digest), self.layout.blob_file(digest)
        if digest.is_empty or await asyncio.to_thread(files.mark_used, path, time.time_ns()):
            await self._drain_verify(digest, chunks)  # idempotent, but wrong bytes are still an error
            if not digest.is_empty:
                self._seen(key, digest.size)
            return
        await self._reserve(digest.size)
        try:
            writer = await self._new_writer()
            try:
                verifier = Verifier(digest)
                await self._stream_to(writer, verifier, chunks)
                verifier.check()
                await _completing(
                    asyncio.to_thread(writer.publish, path), partial(self._count_orphan, key, digest.size)
                )
                # Counted before the abort's await below: a cancel there must not lose the count.
                self._published(key, digest.size)
            except OSError as exc:
                if exc.errno in files.FULL_ERRNOS:
                    raise self._fs_full(digest.size, exc) from exc
                raise
            finally:
                await asyncio.to_thread(writer.abort)
        finally:
            self._release(digest.size)
        self._after_write(key)

    async def _stream_to(
        self, writer: files.TempWriter, verifier: Hashing, chunks: AsyncIterator[bytes]
    ) -> None:
        """Hash and write `chunks` in batches, each chunk held in memory only with budget: short of it, the
        batch so far is written first (so all budget held meanwhile is on its way back), then this upload
        waits, reading no more from its client."""
        pipeline = Pipeline(writer, verifier, self._budget)
        batch: list[bytes] = []
        pending = held = 0

        async def submit() -> None:
            nonlocal batch, pending, held
            full, nbytes, owned = batch, pending, held
            batch, pending, held = [], 0, 0
            await pipeline.submit(full, nbytes, owned)  # owns that budget now, even if this raises

        try:
            async for chunk in chunks:
                if self._budget.try_take(len(chunk)):
                    held += len(chunk)
                else:
                    if batch:
                        await submit()
                    held += await self._budget.take(len(chunk))
                batch.append(chunk)
                pending += len(chunk)
                if pending >= self._batch_bytes:
                    await submit()
            await submit()
            await pipeline.flush()
        finally:
            self._budget.give(held)  # a batch never submitted
            await pipeline.settle()

    async def _new_writer(self) -> files.TempWriter:
        """A new temp file in our temp area, aborted (not leaked) if the caller is cancelled meanwhile."""
        directory = self._temp_area().path
        return await _to_thread_owned(lambda: files.TempWriter(directory), files.TempWriter.abort)

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        """`put` for bytes already in memory: group-committed through the journal when small.

        Falls back to the streaming path when the blob is large or there is no room under the hard cap (the
        blob may already exist, which the streaming path checks first).
        """
        if 0 < digest.size <= self._small_max and await self._reserve_small(digest.size):
            await self._put_small(digest, data)
        else:
            await self._put_streaming(digest, aiter_bytes(data))

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> Digest:
        """`Cas.put_stream`: a small announced body is gathered in memory (with budget, as in `put`) and then
        stored by `put_bytes` (group commit); any other streams to a temp file while hashing
        (`_put_computed`).

        Raises:
            IntegrityError: the body is longer or shorter than `size` (nothing stored, temp file removed).
            StoreFull: no room under the hard cap (mid-body if `size` is None), or the filesystem is full.
        """
        builder = DigestBuilder(function, size)
        if size is None or not 0 < size <= self._small_max:
            return await self._put_computed(builder, chunks)
        held = await self._budget.take(size)
        try:
            parts = []
            async for chunk in chunks:
                builder.update(chunk)
                parts.append(chunk)
            digest = builder.digest()
            await self.put_bytes(digest, b"".join(parts))
        finally:
            self._budget.give(held)
        return digest

    async def _put_computed(self, builder: DigestBuilder, chunks: AsyncIterator[bytes]) -> Digest:
        """Stream to a temp file while hashing, then publish under the digest computed (or drop the temp file
        if that blob is stored already). An announced size is reserved before the first byte; without one,
        room is reserved ahead of the bytes, in steps that double up to `_GROW_MAX` (near the hard cap, just
        what each chunk needs)."""
        reserved = builder.announced or 0

        async def reserving_ahead() -> AsyncIterator[bytes]:
            nonlocal reserved
            seen = 0
            async for chunk in chunks:
                seen += len(chunk)
                if seen > reserved:
                    need = seen - reserved
                    step = max(need, min(max(reserved, _GROW_MIN), _GROW_MAX))
                    try:
                        await self._reserve(step)
                    except StoreFull:
                        if step == need:
                            raise
                        step = need
                        await self._reserve(step)
                    reserved += step
                yield chunk

        if reserved:
            await self._reserve(reserved)
        try:
            writer = await self._new_writer()
            try:
                await self._stream_to(writer, builder, chunks if builder.announced else reserving_ahead())
                digest = builder.digest()
                key, path = blob_key(digest), self.layout.blob_file(digest)
                if digest.is_empty or await asyncio.to_thread(files.mark_used, path, time.time_ns()):
                    if not digest.is_empty:
                        self._seen(key, digest.size)
                    return digest
                await _completing(
                    asyncio.to_thread(writer.publish, path), partial(self._count_orphan, key, digest.size)
                )
                self._published(key, digest.size)  # before the abort's await, as in `_put_streaming`
            except OSError as exc:
                if exc.errno in files.FULL_ERRNOS:
                    raise self._fs_full(builder.size, exc) from exc
                raise
            finally:
                await asyncio.to_thread(writer.abort)
        finally:
            self._release(reserved)
        self._after_write(key)
        return digest

    async def _put_small(self, digest: Digest, data: bytes) -> None:
        """Verify, journal and publish `data` with the next group commit; ends the reservation the caller
        took."""
        key = blob_key(digest)
        if self._commit is None:
            raise RuntimeError("DiskTier is not open")
        try:
            room = await self._journal_room()
        except BaseException:
            self._release(digest.size)
            raise
        if not room:  # not even one segment fits under the hard cap: write it like a large blob
            self._release(digest.size)
            await self._put_streaming(digest, aiter_bytes(data))
            return
        try:
            sig = await self._commit.put(
                digest, self.layout.blob_file(digest), data, partial(self._count_orphan, key, digest.size)
            )
        except BaseException as exc:
            self._release(digest.size)
            if isinstance(exc, OSError) and exc.errno in files.FULL_ERRNOS:
                raise self._fs_full(digest.size, exc) from exc
            raise
        if sig is None:  # already stored (the bytes were still verified)
            self._seen(key, digest.size)
            self._release(digest.size)
        else:
            self._published(key, digest.size)
            self._release(digest.size)  # after counting the file: its bytes stay covered by our claim
            self._after_write(key)
        if self._journal is not None and self._journal.starved:  # it waited for a segment: claim one more
            await self._journal_room()

    async def _journal_room(self) -> bool:
        """Claim a journal segment under the hard cap before the journal creates it: one before the first
        small write, one more whenever an append had to wait for one (up to the journal's maximum). False if
        the journal has none and none can be claimed now."""
        journal = self._journal
        if journal is None:
            raise RuntimeError("DiskTier is not open")
        if (journal.allowed and not journal.starved) or journal.allowed == journal.max_segments:
            return True
        try:
            await self._reserve(journal.segment_bytes)
        except StoreFull:
            return journal.allowed > 0
        self._reserved -= journal.segment_bytes
        if (journal.allowed and not journal.starved) or journal.allowed == journal.max_segments:
            return True  # a concurrent write claimed one meanwhile: ours stays as headroom
        self._journal_claimed += journal.segment_bytes
        journal.allow(journal.allowed + 1)
        return True

    async def _reserve_small(self, size: int) -> bool:
        """Reserve for a group-committed write (awaiting only when our headroom is short); False means let the
        streaming path decide (at a full cap, an already stored blob still succeeds there)."""
        if self._reserve_now(size):
            return True
        try:
            await self._reserve(size)
        except StoreFull:
            return False
        return True

    def _count_orphan(self, key: str, size: int, _result: object) -> None:
        """Count a write published although its caller was cancelled meanwhile (`_completing`, `GroupCommit.put`)."""
        self._wrote(key, size)
        self._changes += 1

    def _published(self, key: str, size: int) -> None:
        self._wrote(key, size)

    async def _drain_verify(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        verifier = Verifier(digest)
        async for chunk in chunks:
            if len(chunk) > 1 << 16:
                await asyncio.to_thread(verifier.update, chunk)
            else:
                verifier.update(chunk)
        verifier.check()

    def _fs_full(self, needed: int, exc: OSError) -> FilesystemFull:
        return FilesystemFull(
            self.layout.root, self.root_used_bytes, needed, self.hard_cap, exc.strerror or "",
            reserved=self._root.others + self._claim,
        )  # fmt: skip

    # -- KV ----------------------------------------------------------------------------------------
    async def get_record(self, namespace: str, key: str) -> Record | None:
        """The raw record (refs not checked here), or None; a damaged file is deleted and is a miss."""
        check_kv_name(namespace, key)
        path, ikey = self.layout.kv_path(namespace, key), kv_key(namespace, key)
        try:
            data, sig = await asyncio.to_thread(files.read_file, path)
        except FileNotFoundError:
            self._forget(ikey)
            return None
        try:
            got_ns, got_key, raw = decode_kv_file(data)
            if (got_ns, got_key) != (namespace, key):
                raise FormatError("kv record file", "names a different record", got=(got_ns, got_key))
            record = decode_record(raw)
        except FormatError:
            await self._discard_corrupt(ikey, path, sig)
            return None
        self._lru.add(
            ikey, len(data), time.time_ns()
        )  # also corrects the size if another process replaced it
        return record

    async def put_record(self, namespace: str, key: str, record: Record) -> None:
        """Store or replace the record atomically. BadRequest for unsafe names, StoreFull at the cap."""
        check_kv_name(namespace, key)
        data = encode_kv_file(namespace, key, encode_record(record))
        await self._reserve(len(data))
        try:
            writer = await self._new_writer()
            try:
                await asyncio.to_thread(writer.write, [data], None)
                await _completing(
                    asyncio.to_thread(writer.publish, self.layout.kv_path(namespace, key)),
                    partial(self._count_orphan, kv_key(namespace, key), len(data)),
                )
                self._wrote(kv_key(namespace, key), len(data))  # before the abort's await
            except OSError as exc:
                if exc.errno in files.FULL_ERRNOS:
                    raise self._fs_full(len(data), exc) from exc
                raise
            finally:
                await asyncio.to_thread(writer.abort)
        finally:
            self._release(len(data))
        self._after_write(kv_key(namespace, key))
