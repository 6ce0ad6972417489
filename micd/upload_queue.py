"""Write-behind upload queue: bounded, N workers, capped exponential backoff, journaled across restarts.

A client write must never wait for (or fail because of) a slow remote, and an accepted write must never be
lost on its way there. So each item is first made durable as one small journal file, then queued in memory;
when the in-memory queue is full the journal alone keeps the item and a refill pass picks it up later. The
handler raising `TierUnavailable` means "try again later" (backoff, doubling up to `max_delay`); any other
exception means the item can never succeed (the source is gone or corrupt): it is logged and dropped. A
journal file is removed only after its handler succeeded; on start every journal file is replayed.

Several daemons may share one journal directory (the disk root is shared by a user's sessions): items are
idempotent, so the worst case is a duplicate upload, and whoever starts next replays what a dead one left.

Journal file `<journal_dir>/<sha256(key)[:40]>` (`<name>.<pid>.<random>.tmp` while it is written, removed
by a later start once older than an hour; `<name>.bad` once found unreadable, kept for inspection):

| offset | width | field                           |
|--------|-------|---------------------------------|
| 0      | 4     | magic `MICQ`                    |
| 4      | 1     | version (1)                     |
| 5      | 2     | u16 key length K (big-endian)   |
| 7      | K     | key, UTF-8; the file ends there |
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from micd.errors import FormatError, TierUnavailable

__all__ = ["MAGIC", "VERSION", "UploadQueue", "decode_entry", "encode_entry"]

log = logging.getLogger(__name__)

MAGIC = b"MICQ"
VERSION = 1
_HEAD = struct.Struct(">4sBH")

Handler = Callable[[str], Awaitable[None]]


def encode_entry(key: str) -> bytes:
    """Serialize a journal entry for `key` (1..65535 UTF-8 bytes)."""
    raw = key.encode()
    if not raw or len(raw) > 0xFFFF:
        raise ValueError(f"upload queue key must be 1..65535 bytes, got {len(raw)}")
    return _HEAD.pack(MAGIC, VERSION, len(raw)) + raw


def decode_entry(data: bytes) -> str:
    """Parse a journal file; FormatError on anything malformed."""
    if len(data) < _HEAD.size:
        raise FormatError("upload journal", "truncated header", offset=0, expected=_HEAD.size, got=len(data))
    magic, version, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("upload journal", "bad magic", offset=0, expected=MAGIC, got=magic)
    if version != VERSION:
        raise FormatError("upload journal", "unsupported version", offset=4, expected=VERSION, got=version)
    if len(data) != _HEAD.size + length:
        raise FormatError(
            "upload journal", "bad length", offset=5, expected=_HEAD.size + length, got=len(data)
        )
    try:
        return data[_HEAD.size :].decode()
    except UnicodeDecodeError as exc:
        raise FormatError("upload journal", "key is not UTF-8", offset=_HEAD.size) from exc


class UploadQueue:
    """Bounded queue of keys, handled by `workers` tasks; `start(handler)` before `submit`."""

    def __init__(
        self,
        journal_dir: Path,
        *,
        workers: int = 4,
        maxsize: int = 10_000,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        fsync: bool = True,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if workers < 1 or maxsize < 1 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError("upload queue needs workers ≥ 1, maxsize ≥ 1 and 0 < base_delay ≤ max_delay")
        self.journal_dir = Path(journal_dir)
        self._workers_n = workers
        self._maxsize = maxsize
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._fsync = fsync
        self.on_depth = on_depth
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self._keys: dict[str, str] = {}  # name → key, for items queued or in flight
        self._inflight: set[str] = set()
        self._again: set[str] = set()  # resubmitted while in flight: run once more
        self._overflow = 0  # journaled items not held in memory
        self._tasks: list[asyncio.Task[None]] = []
        self._refill: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._handler: Handler | None = None
        self.uploaded = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        """Pending items: queued, in flight, or only in the journal."""
        return len(self._keys) + self._overflow

    def _changed(self) -> None:
        if self.depth == 0:
            self._idle.set()
        else:
            self._idle.clear()
        if self.on_depth is not None:
            self.on_depth(self.depth)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, handler: Handler) -> None:
        """Create the journal directory, replay what a previous run left, and start the workers."""
        self._handler = handler
        self._overflow = await asyncio.to_thread(self._prepare_dir)
        if self._overflow:
            log.info("upload queue: replaying %d pending uploads from %s", self._overflow, self.journal_dir)
        self._changed()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"upload-{i}") for i in range(self._workers_n)
        ]
        self._maybe_refill()

    def _prepare_dir(self) -> int:
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        stale_before = time.time() - 3600
        pending = 0
        for entry in os.scandir(self.journal_dir):
            if entry.name.endswith(".tmp"):
                # A write interrupted by a crash (its submit never returned), unless another live daemon
                # sharing this directory is writing it right now: only old ones are removed.
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < stale_before:
                        os.unlink(entry.path)
            elif "." not in entry.name:
                pending += 1
        return pending

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (True) or `timeout` seconds passed (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "upload queue: %d uploads still pending after %.1f s; they stay journaled",
                self.depth,
                timeout,
            )
            return False
        return True

    async def close(self) -> None:
        """Stop the workers; pending items stay in the journal for the next start."""
        tasks = [*self._tasks, *([self._refill] if self._refill else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._refill = [], None

    # -- submit ------------------------------------------------------------------------------------
    async def submit(self, key: str) -> None:
        """Journal `key` and queue it. Never waits for the remote; a full queue leaves it to the journal."""
        name = hashlib.sha256(key.encode()).hexdigest()[:40]
        if name in self._keys:
            if name in self._inflight:
                self._again.add(name)
            return
        data = encode_entry(key)
        existed = await asyncio.to_thread(self._write_entry, name, data)
        if name in self._keys:  # submitted concurrently while we were writing
            return
        if existed:
            return  # already pending, held only by the journal (overflow); the refill will find it
        try:
            self._queue.put_nowait(name)
        except asyncio.QueueFull:
            self._overflow += 1
        else:
            self._keys[name] = key
        self._changed()

    def _write_entry(self, name: str, data: bytes) -> bool:
        path = self.journal_dir / name
        if path.exists():
            return True
        tmp = self.journal_dir / f"{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        with open(tmp, "wb") as file:
            file.write(data)
            if self._fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp, path)
        if self._fsync:
            fd = os.open(self.journal_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return False

    # -- workers -----------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            name = await self._queue.get()
            self._inflight.add(name)
            try:
                await self._run(name, self._keys[name])
                del self._keys[name]
            finally:
                self._inflight.discard(name)
                self._queue.task_done()
            self._changed()
            self._maybe_refill()

    async def _run(self, name: str, key: str) -> None:
        """Handle one item, then remove its journal file; once more if it was resubmitted meanwhile."""
        while True:
            self._again.discard(name)
            await self._handle(key)
            if name in self._again:
                continue
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, self.journal_dir / name)
            if name not in self._again:
                return
            await asyncio.to_thread(self._write_entry, name, encode_entry(key))

    async def _handle(self, key: str) -> None:
        """Run the handler until it succeeds or fails for good; backoff doubles, capped at `max_delay`."""
        handler = self._handler
        if handler is None:
            raise RuntimeError("upload queue used before start()")
        attempt = 0
        while True:
            try:
                await handler(key)
                self.uploaded += 1
                return
            except TierUnavailable as exc:
                delay = min(self._base_delay * 2**attempt, self._max_delay) * random.uniform(0.5, 1.0)
                attempt += 1
                log.info("upload of %s failed (attempt %d: %s); retrying in %.2f s", key, attempt, exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                self.dropped += 1
                log.exception("upload of %s cannot succeed; dropping it", key)
                return

    def _maybe_refill(self) -> None:
        room = self._maxsize - self._queue.qsize()
        if self._overflow and room >= min(self._maxsize, 64) // 2 and self._refill is None:
            self._refill = asyncio.create_task(self._refill_from_journal(), name="upload-refill")

    async def _refill_from_journal(self) -> None:
        """Move journal-only items into the memory queue while there is room; recount the rest."""
        try:
            room = self._maxsize - self._queue.qsize()
            found, unknown = await asyncio.to_thread(self._read_journal, set(self._keys), room)
            for name, key in found:
                if name in self._keys:
                    continue
                try:
                    self._queue.put_nowait(name)
                except asyncio.QueueFull:
                    break
                self._keys[name] = key
            # Names queued by submit() during the scan are in _keys now: count only true journal-only items.
            self._overflow = sum(1 for name in unknown if name not in self._keys)
            self._changed()
        finally:
            self._refill = None
        self._maybe_refill()

    def _read_journal(self, known: set[str], room: int) -> tuple[list[tuple[str, str]], list[str]]:
        found: list[tuple[str, str]] = []
        unknown: list[str] = []
        for entry in os.scandir(self.journal_dir):
            if "." in entry.name or entry.name in known:
                continue
            if len(found) < room:
                try:
                    with open(entry.path, "rb") as file:
                        found.append((entry.name, decode_entry(file.read(_HEAD.size + 0x10000))))
                except FileNotFoundError:
                    continue
                except FormatError as exc:
                    log.error(
                        "upload journal entry %s is unreadable (%s); kept as %s.bad",
                        entry.path,
                        exc,
                        entry.name,
                    )
                    os.replace(entry.path, entry.path + ".bad")
                    continue
            unknown.append(entry.name)
        return found, unknown
