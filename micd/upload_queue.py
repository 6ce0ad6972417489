"""Write-behind upload queue: bounded, N workers, capped exponential backoff, journaled across restarts.

A client write must never wait for (or fail because of) a slow remote, and an accepted write must never be
lost on its way there. So each item is first made durable as one small journal file, then queued in memory;
when the in-memory queue is full the journal alone keeps the item and a refill pass picks it up later. The
handler raising `TierUnavailable` means "try again later" (backoff, doubling up to `max_delay`); any other
exception means the item can never succeed (the source is gone or corrupt): it is logged and dropped. A
journal file is removed only after its handler succeeded; on start every journal file is replayed.

Several daemons may share one journal directory (the disk root is shared by a user's sessions): items are
idempotent, so the worst case is a duplicate upload, and whoever starts next replays what a dead one left.
What must never happen is an older upload of a key landing after a newer one, or a worker removing an entry
that a later submit (its own daemon's or another's) still relies on. So a worker handles a key only while it
holds an exclusive `flock` on `<name>.lock` (another daemon's worker waits for it, with backoff), and first
renames the entry to `<name>.inflight`: its handler reads the source after that rename, so a submit that
still found the entry is covered by this upload, and a later submit writes a fresh entry, which is handled
again once the lock is free. Only `<name>.inflight` is removed afterwards. The kernel drops the lock of a
daemon that dies (even by SIGKILL), so the next start turns an unlocked `<name>.inflight` back into an entry.

Journal file `<journal_dir>/<sha256(key)[:40]>` (`.<name>.<random>.tmp` while it is written, removed by a
later start once older than an hour; `<name>.inflight` while a worker uploads it; `<name>.lock` its
lock; `<name>.bad` once found unreadable, kept for inspection):

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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from micd.errors import TierUnavailable
from mickernel.atomic import write_atomic
from mickernel.binary import BIG, Reader, Writer, check_header
from mickernel.errors import FormatError
from mickernel.locks import open_locked

__all__ = ["MAGIC", "VERSION", "UploadQueue", "decode_entry", "encode_entry"]

log = logging.getLogger(__name__)

MAGIC = b"MICQ"
VERSION = 1
_FORMAT = "upload journal"
_MAX_ENTRY = 7 + 0xFFFF  # the header (magic, version, u16 key length) and the longest key

Handler = Callable[[str], Awaitable[None]]


def encode_entry(key: str) -> bytes:
    """Serialize a journal entry for `key` (1..65535 UTF-8 bytes)."""
    raw = key.encode()
    if not raw or len(raw) > 0xFFFF:
        raise ValueError(f"upload queue key must be 1..65535 bytes, got {len(raw)}")
    return Writer(MAGIC, order=BIG).u8(VERSION).u16(len(raw)).raw(raw).getvalue()


def decode_entry(data: bytes) -> str:
    """Parse a journal file; FormatError on anything malformed."""
    check_header(_FORMAT, data, MAGIC, (VERSION,))
    reader = Reader(_FORMAT, data, 5, order=BIG)
    length = reader.u16("key length")
    if len(data) != reader.pos + length:
        raise FormatError(_FORMAT, "bad length", offset=5, expected=reader.pos + length, got=len(data))
    return reader.text(length, "key")


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
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if workers < 1 or maxsize < 1 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError("upload queue needs workers ≥ 1, maxsize ≥ 1 and 0 < base_delay ≤ max_delay")
        self.journal_dir = Path(journal_dir)
        self._workers_n = workers
        self._maxsize = maxsize
        self._base_delay = base_delay
        self._max_delay = max_delay
        self.on_depth = on_depth
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self._keys: dict[str, str] = {}  # name → key, for items queued or in flight
        self._inflight: set[str] = set()
        self._again: set[str] = set()  # resubmitted while in flight: run once more
        self._overflow = 0  # journaled items not held in memory
        self._scan_overflowed: set[str] | None = None  # names overflowed while a refill scans
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
        for entry in os.scandir(self.journal_dir):
            if entry.name.endswith(".tmp"):
                # A write interrupted by a crash (its submit never returned), unless another live daemon
                # sharing this directory is writing it right now: only old ones are removed.
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < stale_before:
                        os.unlink(entry.path)
            elif entry.name.endswith((".inflight", ".lock")):
                self._recover(entry.name.partition(".")[0])
        return sum(1 for entry in os.scandir(self.journal_dir) if "." not in entry.name)

    def _recover(self, name: str) -> None:
        """Give back an upload whose worker died mid-way (its lock is free): `<name>.inflight` becomes
        `<name>` again, and the dead worker's lock file goes. A live worker's lock is left alone."""
        try:
            fd = self._try_lock(name)
            if fd is None:
                return
            try:
                self._give_back(name)
            finally:
                self._unlock(name, fd)
        except OSError as exc:  # e.g. a read-only directory: replay what can be, never refuse to start
            log.error("upload journal: could not recover %s (%s)", name, exc)

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
        # The entry is written first, always: even when the key is queued or in flight here, a worker (ours,
        # or another daemon's) may have taken the old entry and read the source before this submit, and
        # until an upload reads the source after now, only the journal keeps this submit from being lost.
        data = encode_entry(key)
        try:
            await asyncio.to_thread(self._write_entry, name, data)
        except OSError:
            if name in self._inflight:
                self._again.add(name)  # not journaled (the caller hears why), but uploaded once more now
            raise
        if name in self._inflight:
            self._again.add(name)  # the worker runs it once more, taking this entry first
            return
        if name in self._keys:  # queued here (before, or concurrently while we were writing)
            return
        try:
            self._queue.put_nowait(name)
        except asyncio.QueueFull:
            # Journal-only now. Counted even when the entry existed: it may be a daemon's that died, counted
            # by nobody; counting it twice only lasts until the next refill recounts the journal.
            self._overflow += 1
            if self._scan_overflowed is not None:
                self._scan_overflowed.add(name)
        else:
            # An entry that existed may be another daemon's (queued there, or left by a dead one): queueing
            # it here too costs at most a lock wait, and it may be counted as overflow too until the next
            # refill recounts.
            self._keys[name] = key
        self._changed()

    def _write_entry(self, name: str, data: bytes) -> bool:
        path = self.journal_dir / name
        if path.exists():
            return True
        write_atomic(path, data)
        return False

    # -- workers -----------------------------------------------------------------------------------
    async def _worker(self) -> None:
        """Handle queued names until cancelled. Nothing an item raises may end this loop: a dead worker
        would leave its key pending forever (drain() never idle) and the queue one worker short."""
        while True:
            name = await self._queue.get()
            self._inflight.add(name)
            try:
                await self._run(name, self._keys[name])
            except Exception:
                log.exception("upload queue: handling %s failed; it stays journaled for the next start", name)
            finally:
                self._keys.pop(name, None)
                self._inflight.discard(name)
                self._queue.task_done()
            self._changed()
            self._maybe_refill()

    async def _run(self, name: str, key: str) -> None:
        """Handle one item; once more if it was resubmitted meanwhile (its entry written again first)."""
        journaled = True
        while True:
            self._again.discard(name)
            await self._run_locked(name, key, force=not journaled)
            if name not in self._again:
                return
            written = await self._journal_step(
                f"re-journal {key}", self._write_entry, name, encode_entry(key)
            )
            journaled = written is not None

    async def _run_locked(self, name: str, key: str, *, force: bool) -> None:
        """Under the key's lock: take the entry, run the handler, remove the taken entry.

        No entry to take means another daemon took it after this one was submitted, so its upload read the
        newer source: skipped, unless `force` (the resubmit could not be journaled). A journal error never
        stops the upload; it only leaves an entry behind, i.e. a duplicate upload at some later start.
        Cancelled (close()), it gives the entry back, so the journal holds it as a plain pending entry.
        """
        fd = await self._lock(name)
        taken = None
        try:
            taken = await self._journal_step(f"take {key}", self._take, name)
            if taken is False and not force:
                return
            while True:
                self._again.discard(name)
                await self._handle(key)
                if name not in self._again:
                    break
                # Resubmitted meanwhile: take its fresh entry too (it replaces ours), then upload again.
                retaken = await self._journal_step(f"take {key}", self._take, name)
                taken = taken or retaken
            if taken:
                await self._journal_step(f"remove {key}", _unlink, self.journal_dir / f"{name}.inflight")
        except asyncio.CancelledError:
            if taken:
                try:
                    self._give_back(name)
                except OSError as exc:  # left as .inflight: the next start gives it back
                    log.error("upload journal: could not give back %s (%s)", key, exc)
            raise
        finally:
            if fd is not None:
                self._unlock(name, fd)

    async def _journal_step(self, what: str, func: Callable[..., object], *args: object) -> object | None:
        """Run one blocking journal operation in a thread; an I/O error is logged and returns None."""
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            log.error("upload journal: could not %s (%s)", what, exc)
            return None

    def _give_back(self, name: str) -> None:
        """Turn `<name>.inflight` back into the pending entry `<name>` (lock held)."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.journal_dir / f"{name}.inflight", self.journal_dir / name)

    def _take(self, name: str) -> bool:
        """Rename `<name>` to `<name>.inflight` (lock held); False if there is neither (someone handled it)."""
        inflight = self.journal_dir / f"{name}.inflight"
        try:
            os.replace(self.journal_dir / name, inflight)
        except FileNotFoundError:
            return inflight.exists()  # left by a worker that died mid-upload: redo it
        return True

    async def _lock(self, name: str) -> int | None:
        """The key's lock fd, waiting (backoff) while another daemon's worker holds it; None on I/O error.

        Taken and released in the event loop thread (a few syscalls), so a cancellation never strands an
        acquired lock in a thread."""
        attempt = 0
        while True:
            try:
                fd = self._try_lock(name)
            except OSError as exc:
                log.error("upload journal: could not lock %s (%s); uploading without the lock", name, exc)
                return None
            if fd is not None:
                return fd
            attempt += 1
            await asyncio.sleep(self._delay(attempt))

    def _try_lock(self, name: str) -> int | None:
        """Open and flock `<name>.lock` without blocking; the fd, or None while a live worker holds it."""
        path = self.journal_dir / f"{name}.lock"
        while True:
            fd = open_locked(path, blocking=False)
            if fd is None:
                return None
            try:
                held = os.fstat(fd)
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
            except BaseException:
                os.close(fd)
                raise
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return fd
            os.close(fd)  # its holder removed it between our open and flock: lock the new one

    def _unlock(self, name: str, fd: int) -> None:
        """Remove the lock file while still holding it, then drop the lock."""
        try:
            _unlink(self.journal_dir / f"{name}.lock")
        except OSError as exc:
            log.error("upload journal: could not remove the lock of %s (%s)", name, exc)
        finally:
            os.close(fd)

    def _delay(self, attempt: int) -> float:
        """Backoff before retry `attempt` (1, 2, ...): doubling from `base_delay`, capped, with jitter."""
        return min(self._base_delay * 2 ** (attempt - 1), self._max_delay) * random.uniform(0.5, 1.0)

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
                attempt += 1
                delay = self._delay(attempt)
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
        """Move journal-only items into the memory queue while there is room; recount the rest.

        The recount is the scan's names plus those that overflowed while it ran (the scan may have missed
        them); without the latter they would be journaled but counted nowhere, so never refilled."""
        self._scan_overflowed = set()
        try:
            room = self._maxsize - self._queue.qsize()
            try:
                found, unknown = await asyncio.to_thread(self._read_journal, set(self._keys), room)
            except OSError as exc:
                # Not re-armed at once (it would spin on a broken directory): the next finished item does.
                log.error("upload journal: could not scan %s (%s)", self.journal_dir, exc)
                return
            for name, key in found:
                if name in self._keys:
                    continue
                try:
                    self._queue.put_nowait(name)
                except asyncio.QueueFull:
                    break
                self._keys[name] = key
            # Names queued by submit() during the scan are in _keys now: count only true journal-only items.
            pending = self._scan_overflowed.union(unknown)
            self._overflow = sum(1 for name in pending if name not in self._keys)
            self._changed()
        finally:
            self._refill = None
            self._scan_overflowed = None
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
                        found.append((entry.name, decode_entry(file.read(_MAX_ENTRY + 1))))
                except FileNotFoundError:
                    continue
                except FormatError as exc:
                    log.error(
                        "upload journal entry %s is unreadable (%s); kept as %s.bad",
                        entry.path,
                        exc,
                        entry.name,
                    )
                    # Another daemon sharing the directory may have set it aside first.
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(entry.path, entry.path + ".bad")
                    continue
                except OSError as exc:
                    log.error("upload journal entry %s could not be read (%s); skipped", entry.path, exc)
                    continue
            unknown.append(entry.name)
        return found, unknown


def _unlink(path: Path) -> None:
    """Remove `path`; already gone is fine (another daemon sharing the directory may have removed it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
