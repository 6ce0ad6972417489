"""`TieredStore`: memory → disk → S3 composed into one `micd.store.Store`; `for_tool` hands out
per-tool metric views (`micd.tiers.toolview`).

Reads go down the tiers and fill the ones above on the way back (S3 → disk → memory for small blobs); the
bytes that fill a tier were verified by the tier they came from. Writes land on disk (memory when there is no
disk); small ones (≤ `memory_fill_limit`) are then also kept in memory (write-through), so a fresh blob is
found and served without touching disk. Memory gets them only after the disk write succeeded, so it never
holds a blob the store rejected; a memory hit is a real hit (the verified bytes are there) even if another
daemon has since evicted the disk copy. Writes reach S3 later through the journaled `UploadQueue` (write-behind), so a slow or dead S3 never slows
or fails a client request: every `TierUnavailable` is counted (`s3_errors_total`), logged by the S3 tier, and
degrades to the local tiers. `find_missing` and `resolve` ask S3 only about what no local tier has. A record
is served only when every blob it references exists in some tier.

Without a disk tier, writes land in memory only, so a blob larger than the memory tier's `max_blob` (or one
evicted before its upload) never reaches S3: the memory tier would not keep it either; give S3 a disk tier.

This module owns the tiers' lifecycle: `start()` opens disk and S3 and replays the upload journal; `close()`
drains the queue for up to `drain_timeout` seconds (what is left stays journaled) and closes the tiers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from micd.blobs import BytesBlob, Verifier, aiter_bytes
from micd.errors import TierUnavailable
from micd.metrics import Metrics
from micd.store import Blob, Digest, Record, Store
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.toolview import ToolView
from micd.validate import parse_key, parse_namespace
from mickernel.errors import MicError

if TYPE_CHECKING:  # aioboto3 costs ~140 ms of start-up; a daemon without S3 never imports it
    from micd.tiers.s3 import S3Tier
    from micd.tiers.s3_spool import SpoolBlob
    from micd.upload_queue import UploadQueue

__all__ = ["TieredStore"]

log = logging.getLogger(__name__)

_DIRECT = "store"  # the tool label of calls made on the store itself rather than through for_tool()
_DEGRADED_DRAIN = 2.0  # seconds a shutdown waits for uploads while S3 is failing


class TieredStore:
    """One CAS + KV over the configured tiers. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        *,
        memory: MemoryTier,
        disk: DiskTier | None = None,
        s3: S3Tier | None = None,
        queue: UploadQueue | None = None,
        metrics: Metrics | None = None,
        memory_fill_limit: int = 1 << 20,
    ) -> None:
        if s3 is not None and queue is None:
            raise ValueError("an S3 tier needs an upload queue (writes reach S3 only through it)")
        self.memory = memory
        self.disk = disk
        self.s3 = s3
        self.queue = queue
        self.metrics = metrics or Metrics()
        self._local: DiskTier | MemoryTier = disk if disk is not None else memory
        self._fill_limit = min(memory_fill_limit, memory.max_blob)
        self._views: dict[str, ToolView] = {}
        self.s3_errors = 0
        self.local_errors = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open disk and S3 and start the upload queue (which replays uploads journaled by a previous run)."""
        if self.disk is not None:
            await self.disk.open()
        if self.s3 is not None:
            if self.s3.spool_dir is None and self.disk is not None:
                # Large transfers spool next to the cache, not in a /tmp that may be RAM (tmpfs).
                self.s3.spool_dir = self.disk.layout.base / "s3-spool"
                await asyncio.to_thread(self.s3.spool_dir.mkdir, parents=True, exist_ok=True)
            await self.s3.open()
        if self.queue is not None:
            self.queue.on_depth = self._queue_depth
            await self.queue.start(self._upload)

    async def close(self, drain_timeout: float = 30) -> None:
        """Drain pending uploads (bounded by `drain_timeout`), then stop the queue and close the tiers.

        While S3 is degraded the drain is cut to a couple of seconds: waiting longer would only delay the
        shutdown, and whatever is left stays journaled for the next start.
        """
        if self.queue is not None:
            if self.s3 is not None and self.s3.state == "degraded":
                drain_timeout = min(drain_timeout, _DEGRADED_DRAIN)
            if drain_timeout > 0 and self.queue.depth:
                await self.queue.drain(drain_timeout)
            await self.queue.close()
        if self.s3 is not None:
            await self.s3.close()
        if self.disk is not None:
            await self.disk.close()

    def for_tool(self, tool: str, namespaces: tuple[str, ...] = ()) -> Store:
        """Return a view recording per-tool hits, misses, bytes, latency (tier "all"), delegating the rest;
        its KV calls are limited to `namespaces` (each with its `/…` sub-namespaces)."""
        view = self._views.get(tool)
        if view is None:
            report = functools.partial(self._event, tool, "all")
            view = self._views[tool] = ToolView(self, tool, report, namespaces)
        elif view.namespaces != namespaces:
            raise ValueError(f"tool {tool} already has a view for namespaces {view.namespaces}")
        return view

    def stats(self) -> dict[str, Any]:
        """Per-tier bytes and entries, upload queue depth, S3 state and error counts (for `mic stats`)."""
        out: dict[str, Any] = {
            "memory": {
                "bytes": self.memory.used,
                "entries": len(self.memory._blobs),
                "budget": self.memory.budget,
            },
            "errors": {"s3": self.s3_errors, "local": self.local_errors},
        }
        if self.disk is not None:
            out["disk"] = {
                "bytes": self.disk.used_bytes,
                "entries": self.disk.entry_count,
                **self.disk.stats(),
            }
        if self.s3 is not None:
            out["s3"] = {k: v for k, v in self.s3.stats().items() if v is not None}
        if self.queue is not None:
            out["upload_queue"] = {
                "depth": self.queue.depth, "uploaded": self.queue.uploaded, "dropped": self.queue.dropped,
            }  # fmt: skip
        return out

    # -- bookkeeping -------------------------------------------------------------------------------
    def _event(self, tool: str, tier: str, event: str, nbytes: int = 0, started: float | None = None) -> None:
        seconds = time.perf_counter() - started if started is not None else 0.0
        self.metrics.observe(tool=tool, tier=tier, event=event, nbytes=nbytes, seconds=seconds)

    def _s3_failed(self, tool: str, what: str, exc: TierUnavailable) -> None:
        self.s3_errors += 1
        self.metrics.inc("s3_errors_total")
        self._event(tool, "s3", "error")
        log.debug("S3 %s degraded to local tiers: %s", what, exc)

    def _queue_depth(self, depth: int) -> None:
        self.metrics.set_gauge("upload_queue_depth", depth)

    async def _enqueue(self, key: str) -> None:
        """Journal an upload; a journal failure is logged and counted, never a failed client write."""
        if self.queue is None:
            return
        try:
            await self.queue.submit(key)
        except OSError as exc:
            self.local_errors += 1
            self.metrics.inc("upload_journal_errors_total")
            log.error("could not journal the S3 upload of %s (%s); it will not reach S3", key, exc)

    # -- CAS ---------------------------------------------------------------------------------------
    async def contains(self, digest: Digest, *, tool: str = _DIRECT) -> bool:
        """Tell whether some tier has the blob (S3 asked only on a local miss)."""
        return not await self.find_missing([digest], tool=tool)

    async def contains_locally(self, digest: Digest) -> bool:
        """Tell whether memory or disk holds the blob, never asking S3: what an upload checks before taking
        the bytes (the client's FindMissing already asked S3, and its answer is not cached when negative)."""
        if not await self.memory.find_missing([digest]):
            return True
        return self.disk is not None and not await self.disk.find_missing([digest])

    async def find_missing(self, digests: Iterable[Digest], *, tool: str = _DIRECT) -> list[Digest]:
        """Local tiers first; S3 (batched, bounded, existence-cached) only for what is missing locally."""
        missing = await self.memory.find_missing(digests)
        if missing and self.disk is not None:
            missing = await self.disk.find_missing(missing)
        if missing and self.s3 is not None:
            try:
                missing = await self.s3.find_missing(missing)
            except TierUnavailable as exc:
                self._s3_failed(tool, "find_missing", exc)
        return missing

    async def resolve(self, function: str, hex_: str, *, tool: str = _DIRECT) -> Digest | None:
        """The digest of the blob stored under this hash: the first tier that knows it (memory, disk, then
        S3, whose existence cache keeps a hit); None if none does or S3 is down."""
        digest = await self.memory.resolve(function, hex_)
        if digest is None and self.disk is not None:
            digest = await self.disk.resolve(function, hex_)
        if digest is None and self.s3 is not None:
            try:
                digest = await self.s3.resolve(function, hex_)
            except TierUnavailable as exc:
                self._s3_failed(tool, "resolve", exc)
        return digest

    async def get(
        self, digest: Digest, offset: int = 0, limit: int | None = None, *, tool: str = _DIRECT
    ) -> Blob | None:
        """Memory, then disk, then S3; a hit below fills the tiers above. None on a miss everywhere."""
        if digest.is_empty:
            return BytesBlob(b"", offset, limit)
        started = time.perf_counter()
        blob: Blob | None = await self.memory.get(digest, offset, limit)
        if blob is not None:
            self._event(tool, "memory", "hit", blob.length, started)
            return blob
        self._event(tool, "memory", "miss")
        if self.disk is not None:
            blob = await self._get_disk(digest, offset, limit)
            if blob is not None:
                self._event(tool, "disk", "hit", blob.length, started)
                return blob
            self._event(tool, "disk", "miss")
        if self.s3 is None:
            return None
        try:
            remote = await self.s3.get(digest)
        except TierUnavailable as exc:
            self._s3_failed(tool, "get", exc)
            return None
        if remote is None:
            self._event(tool, "s3", "miss")
            return None
        self._event(tool, "s3", "hit", digest.size, started)
        return await self._fill_from_s3(digest, remote, offset, limit)

    async def _get_disk(self, digest: Digest, offset: int, limit: int | None) -> Blob | None:
        disk = self._disk()
        if digest.size > self._fill_limit:
            return await disk.get(digest, offset, limit)
        data = await disk.get_bytes(digest)
        if data is None:
            return None
        self.memory.insert(digest, data)
        return BytesBlob(data, offset, limit)

    async def _fill_from_s3(
        self, digest: Digest, remote: BytesBlob | SpoolBlob, offset: int, limit: int | None
    ) -> Blob:
        """Copy a verified S3 download to disk (and memory when small), then serve the range."""
        if isinstance(remote, BytesBlob):
            data = await remote.read_all()
            if self.disk is not None:
                await self._fill_disk(digest, aiter_bytes(data))
            if digest.size <= self._fill_limit:
                self.memory.insert(digest, data)
            return BytesBlob(data, offset, limit)
        try:
            if self.disk is not None and await self._fill_disk_from(digest, remote):
                local = await self.disk.get(digest, offset, limit)
                if local is not None:
                    return local
            return remote.view(offset, limit)
        finally:
            await remote.aclose()

    async def _fill_disk_from(self, digest: Digest, remote: SpoolBlob) -> bool:
        """`_fill_disk` from a handle of its own on the spool, released here: the disk may refuse the blob
        (hard cap) before reading a byte, and an unread `chunks()` never releases its handle, which would
        keep the spool's temp file open until garbage collection."""
        fill = remote.view()
        try:
            return await self._fill_disk(digest, fill.chunks())
        finally:
            await fill.aclose()

    async def _fill_disk(self, digest: Digest, chunks: AsyncIterator[bytes]) -> bool:
        try:
            await self._disk().put(digest, chunks)
        except (MicError, OSError) as exc:  # hard cap, disk full: serve from the download instead
            self.local_errors += 1
            log.warning("could not keep %s from S3 on disk: %s", digest, exc)
            return False
        return True

    async def get_bytes(self, digest: Digest, *, tool: str = _DIRECT) -> bytes | None:
        """Whole blob in memory, or None (small blobs only)."""
        blob = await self.get(digest, tool=tool)
        if blob is None:
            return None
        if isinstance(blob, BytesBlob):
            return await blob.read_all()
        return b"".join([chunk async for chunk in blob.chunks()])

    async def get_many_bytes(self, digests: Sequence[Digest], *, tool: str = _DIRECT) -> list[bytes | None]:
        """`get_bytes` for a batch: memory answers in one call; only its misses go down, concurrently."""
        started = time.perf_counter()
        found = await self.memory.get_many_bytes(digests)
        misses = []
        for i, (digest, data) in enumerate(zip(digests, found, strict=True)):
            if data is None:
                misses.append(i)
            elif digest.size:
                self._event(tool, "memory", "hit", len(data), started)
        if misses:
            below = await asyncio.gather(*(self.get_bytes(digests[i], tool=tool) for i in misses))
            for i, data in zip(misses, below, strict=True):
                found[i] = data
        return found

    async def put(self, digest: Digest, chunks: AsyncIterator[bytes], *, tool: str = _DIRECT) -> None:
        """Write to the local tier (verified), then journal the upload to S3."""
        started = time.perf_counter()
        if digest.is_empty:
            verifier = Verifier(digest)
            async for chunk in chunks:
                verifier.update(chunk)
            verifier.check()
            return
        if self.disk is None or digest.size > self._fill_limit:
            await self._local.put(digest, chunks)
        else:
            kept: list[bytes] = []
            await self.disk.put(digest, _tee(chunks, kept, digest.size))  # verifies
            self.memory.insert(digest, b"".join(kept))
        self._event(tool, "disk" if self.disk is not None else "memory", "put", digest.size, started)
        await self._after_put(digest)

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None, *, tool: str = _DIRECT
    ) -> Digest:
        """`put` for a blob whose digest is computed from its bytes (`Cas.put_stream`): the local tier
        hashes while writing; small blobs are kept in memory too; then the upload to S3 is journaled."""
        started = time.perf_counter()
        if self.disk is None:
            digest = await self.memory.put_stream(function, chunks, size)
        elif size is not None and size > self._fill_limit:
            digest = await self.disk.put_stream(function, chunks, size)
        else:
            kept: list[bytes] = []
            digest = await self.disk.put_stream(function, _tee(chunks, kept, self._fill_limit), size)
            if digest.size <= self._fill_limit:
                self.memory.insert(digest, b"".join(kept))
        if not digest.is_empty:
            self._event(tool, "disk" if self.disk is not None else "memory", "put", digest.size, started)
            await self._after_put(digest)
        return digest

    async def put_bytes(self, digest: Digest, data: bytes, *, tool: str = _DIRECT) -> None:
        """`put` for a blob already in memory; small blobs are kept in memory too."""
        started = time.perf_counter()
        await self._local.put_bytes(digest, data)  # verifies
        if digest.is_empty:
            return
        self._event(tool, "disk" if self.disk is not None else "memory", "put", digest.size, started)
        if self.disk is not None and digest.size <= self._fill_limit:
            self.memory.insert(digest, data)
        await self._after_put(digest)

    async def _after_put(self, digest: Digest) -> None:
        if self.s3 is not None and not self.s3.known(digest):
            await self._enqueue(f"cas/{digest.function}/{digest.hex}/{digest.size}")

    # -- KV ----------------------------------------------------------------------------------------
    async def get_record(self, namespace: str, key: str, *, tool: str = _DIRECT) -> Record | None:
        """Return the record from disk (or memory), else S3 (kept locally); None unless all refs exist."""
        started = time.perf_counter()
        tier = "disk" if self.disk is not None else "memory"
        record = await self._local.get_record(namespace, key)
        from_s3 = False
        if record is None:
            self._event(tool, tier, "miss")
            if self.s3 is not None:
                try:
                    record = await self.s3.get_record(namespace, key)
                except TierUnavailable as exc:
                    self._s3_failed(tool, "get_record", exc)
                from_s3, tier = record is not None, "s3"
                if record is None:
                    self._event(tool, "s3", "miss")
        if record is None:
            return None
        if record.refs and await self.find_missing(record.refs, tool=tool):
            self._event(tool, tier, "miss")
            log.debug("record %s/%s references missing blobs; not served", namespace, key)
            return None
        self._event(tool, tier, "hit", len(record.value), started)
        if from_s3:
            try:
                await self._local.put_record(namespace, key, record)
            except (MicError, OSError) as exc:
                self.local_errors += 1
                log.warning("could not keep record %s/%s from S3 locally: %s", namespace, key, exc)
        return record

    async def put_record(self, namespace: str, key: str, record: Record, *, tool: str = _DIRECT) -> None:
        """Store locally (raises StoreFull at the hard cap), then journal the upload to S3."""
        parse_namespace(namespace)
        parse_key(key)
        started = time.perf_counter()
        await self._local.put_record(namespace, key, record)
        self._event(tool, "disk" if self.disk is not None else "memory", "put", len(record.value), started)
        if self.s3 is not None:
            await self._enqueue(f"kv/{namespace}/{key}")

    # -- write-behind ------------------------------------------------------------------------------
    async def _upload(self, item: str) -> None:
        """Upload-queue handler: copy one blob or record from the local tier to S3.

        TierUnavailable (S3 down) is retried by the queue; a source that vanished is logged and dropped.
        """
        started = time.perf_counter()
        kind, _, rest = item.partition("/")
        try:
            if kind == "cas":
                function, hex_, size = rest.split("/")
                nbytes = await self._upload_blob(Digest(function, hex_, int(size)))
            elif kind == "kv":
                namespace, _, key = rest.rpartition("/")
                nbytes = await self._upload_record(namespace, key)
            else:
                raise ValueError(f"unknown upload item {item!r}")
        except TierUnavailable as exc:
            self._s3_failed("upload", "upload", exc)
            raise
        if nbytes is not None:
            self._event("upload", "s3", "put", nbytes, started)

    def _disk(self) -> DiskTier:
        if self.disk is None:
            raise RuntimeError("disk operation without a disk tier")
        return self.disk

    def _remote(self) -> S3Tier:
        if self.s3 is None:
            raise RuntimeError("upload without an S3 tier")
        return self.s3

    async def _upload_blob(self, digest: Digest) -> int | None:
        if await self._remote().contains(digest):
            return None
        blob = await self._local.get(digest)
        if blob is None:
            log.warning("%s left the local tiers before its S3 upload; not uploaded", digest)
            return None
        try:
            await self._remote().put(digest, blob.chunks())
        finally:
            await blob.aclose()
        return digest.size

    async def _upload_record(self, namespace: str, key: str) -> int | None:
        record = await self._local.get_record(namespace, key)
        if record is None:
            log.warning("record %s/%s left the local tier before its S3 upload; not uploaded", namespace, key)
            return None
        await self._remote().put_record(namespace, key, record)
        return len(record.value)


async def _tee(chunks: AsyncIterator[bytes], kept: list[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass `chunks` through, keeping a copy of the first `limit` bytes (more is an upload the disk rejects)."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total <= limit:
            kept.append(chunk)
        yield chunk
