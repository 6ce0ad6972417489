"""`FileBlob`: a range of a large blob file, sent by sendfile or streamed in bounded chunks, verified on every
read.

Every read hashes the whole file while serving the range (the bytes before the range are hashed without
being sent, the bytes after it before the send ends) and withholds the last part until the hash is checked.
So a corrupt file yields `IntegrityError` and never a complete wrong body; the receiver may have seen a wrong
prefix, which is why the error must abort its response.

Why every read, not only the first: a file once verified can still rot in place, or be edited with its
mtime put back, keeping inode, size and mtime; trusting it then served wrong bytes as a whole 200.

Two ways out, each near the hash's own speed (bench/RESULTS.md, issue 10):
- `send_verified` (HTTP): a worker thread reads and hashes the file in batches while the kernel sends the
  range by sendfile, never past what is hashed; the last ≤ 1 MiB is sent from the very bytes hashed, after
  the digest matched. No copy of the body through Python. What it cannot see: the file changing between the
  hash's read and the send's (both read the same page cache, so rot on disk is seen by both; a blob file is
  never written once published).
- `chunks()` (gRPC ByteStream, encoded HTTP): three stages overlap, a worker thread hashes one batch, another
  reads the next, and the caller sends; every byte sent is a byte hashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from micd.blobs import CHUNK
from micd.store import Digest, SendFile, new_hasher
from mickernel.errors import IntegrityError

__all__ = ["FileBlob"]

_BATCH = 8 * CHUNK  # bytes per worker-thread call of `chunks()` (amortises the hand-off, bounds memory), and
# between the hash's reports to the sendfile half of `send_verified`
_TAIL = CHUNK  # what `send_verified` withholds until the digest matched


class FileBlob:
    """An open blob file range. `aclose()` (or exhausting `chunks()`) closes the fd. Read it once: by
    `chunks()` or by `send_verified` (it implements `micd.store.SendfileBlob`)."""

    def __init__(
        self, fd: int, digest: Digest, offset: int, length: int, *, on_corrupt: Callable[[], Awaitable[None]]
    ) -> None:
        self.size = digest.size
        self.offset = offset
        self.length = length
        self._fd: int | None = fd
        self._digest = digest
        self._hasher = new_hasher(digest.function)
        self._lock = threading.Lock()  # aclose must never close the fd under a pread in a worker thread
        self._on_corrupt = on_corrupt
        self._piece: memoryview | None = None  # `_hash_file`'s read buffer, reused

    def _read(self, start: int, end: int) -> list[bytes]:
        """Read [start, end) in ≤ CHUNK pieces (the caller hashes them). A short read means a damaged file."""
        out: list[bytes] = []
        with self._lock:
            fd = self._open_fd()
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(CHUNK, end - pos), pos)
                if not chunk:
                    raise EOFError(pos)
                out.append(chunk)
                pos += len(chunk)
        return out

    def _hash_file(self, start: int, end: int, hashed: Callable[[int], None] | None = None) -> None:
        """Hash [start, end), read into one reused buffer: bytes never sent, or sent by sendfile, need no
        object of their own (a fresh 1 MiB bytes per read cost a tenth of the hash's speed). Calls
        `hashed(position)` after each batch, which may raise to stop the hash."""
        with self._lock:
            fd = self._open_fd()
            if self._piece is None:
                self._piece = memoryview(bytearray(CHUNK))
            pos, report_at = start, start + _BATCH
            while pos < end:
                got = os.preadv(fd, [self._piece[: min(CHUNK, end - pos)]], pos)
                if not got:
                    raise EOFError(pos)
                self._hasher.update(self._piece[:got])
                pos += got
                if hashed is not None and (pos >= report_at or pos == end):
                    hashed(pos)
                    report_at = pos + _BATCH

    def _hash_all_keeping(self, start: int, end: int, hashed: Callable[[int], None]) -> list[bytes]:
        """Hash the whole file in order, in this one worker-thread call (no hand-off to the event loop per
        batch: under load those gaps cost a tenth of a GET's time), calling `hashed` as `_hash_file` does;
        return [start, end) as it was read and hashed."""
        self._hash_file(0, start, hashed)
        kept = self._read(start, end)
        self._hash(kept)
        self._hash_file(end, self.size, hashed)
        return kept

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("blob already closed")
        return self._fd

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hasher.update(chunk)

    async def _hash_span(self, start: int, end: int) -> None:
        """Hash [start, end) a batch per worker-thread call (a cancelled read stops within a batch)."""
        for pos in range(start, end, _BATCH):
            await asyncio.to_thread(self._hash_file, pos, min(end, pos + _BATCH))

    async def _verify(self) -> None:
        """Drop the blob and raise IntegrityError unless the whole file hashed to its digest."""
        got = self._hasher.hexdigest()
        if got != self._digest.hex:
            await self._on_corrupt()
            raise IntegrityError(self._digest.hex, got, what=f"stored blob {self._digest}")

    async def _short_file(self, exc: EOFError) -> IntegrityError:
        """Drop the blob whose file ended early; the error to raise."""
        await self._on_corrupt()
        return IntegrityError(str(self._digest), f"file ends at {exc.args[0]}", what="stored blob size")

    async def send_verified(self, send_file: SendFile, write: Callable[[bytes], Awaitable[object]]) -> None:
        """Send the range by `send_file` and, once the digest matched, its last ≤ 1 MiB by `write` (see
        `micd.store.SendfileBlob`). A range of ≤ 1 MiB goes by `write` alone, after the whole file is hashed."""
        end = self.offset + self.length
        tail_start = max(self.offset, end - _TAIL)
        with io.FileIO(self._open_fd(), closefd=False) as file:  # for `send_file`; the fd stays ours
            sender = _HashedSendfile(send_file, file, self.offset, tail_start)
            try:
                tail = await asyncio.to_thread(self._hash_all_keeping, tail_start, end, sender.hashed)
                await sender.finish()
                await self._verify()
            except EOFError as exc:
                raise await self._short_file(exc) from exc
            finally:
                await sender.stop()
        for chunk in tail:
            await write(chunk)

    async def _batches(self, start: int, end: int) -> AsyncGenerator[list[bytes], None]:
        """The chunks of [start, end), a batch per worker-thread read, the next batch read while the caller
        consumes this one (a gRPC or HTTP send then overlaps the disk read)."""
        ahead: asyncio.Future[list[bytes]] | None = None
        try:
            for pos in range(start, end, _BATCH):
                batch = await ahead if ahead is not None else await self._read_batch(pos, end)
                nxt = pos + _BATCH
                ahead = asyncio.ensure_future(self._read_batch(nxt, end)) if nxt < end else None
                yield batch
        finally:
            if ahead is not None:  # the caller stopped early: let the read finish before the fd closes
                await asyncio.gather(ahead, return_exceptions=True)

    def _read_batch(self, pos: int, end: int) -> Awaitable[list[bytes]]:
        """Read the batch at `pos` in a worker thread."""
        return asyncio.to_thread(self._read, pos, min(end, pos + _BATCH))

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the range in chunks ≤ 1 MiB; IntegrityError instead of the last chunk on corruption."""
        end = self.offset + self.length
        hashing: asyncio.Future[None] | None = None
        try:
            await self._hash_span(0, self.offset)
            pending: bytes | None = None
            async with contextlib.aclosing(self._batches(self.offset, end)) as batches:
                async for batch in batches:
                    # Three stages overlap: this batch hashed in one thread, the next read in another, and
                    # this one sent by the caller; hashing stays in order, one batch at a time.
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(asyncio.to_thread(self._hash, batch))
                    for chunk in batch:
                        if pending is not None:
                            yield pending
                        pending = chunk
            if hashing is not None:
                done = hashing
                hashing = None
                await done
            await self._hash_span(end, self.size)
            await self._verify()
            if pending is not None:
                yield pending
        except EOFError as exc:
            raise await self._short_file(exc) from exc
        finally:
            if hashing is not None:  # the caller stopped early: no thread may hash once we are gone
                await asyncio.gather(hashing, return_exceptions=True)
            await self.aclose()

    async def aclose(self) -> None:
        if self._fd is not None:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class _SendStopped(Exception):
    """Ends the hash of a `send_verified` that is over (failed or cancelled)."""


class _HashedSendfile:
    """The send half of `send_verified`: [start, stop) of the file by `send_file`, one call at a time, each
    of all the bytes hashed and not sent yet. Sends overlap the hashing, a send starting as soon as the one
    before ends; hashing never waits for them, but stops once one failed."""

    def __init__(self, send_file: SendFile, file: BinaryIO, start: int, stop: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._send_file = send_file
        self._file = file
        self._sent = start
        self._hashed = start
        self._stop = stop
        self._running: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None  # a send's error, or _SendStopped: ends the hash

    def hashed(self, position: int) -> None:
        """From the hashing thread: bytes up to `position` are hashed, have them sent. Raises the error of
        a failed send, which ends the hash."""
        if self._failure is not None:
            raise self._failure
        self._loop.call_soon_threadsafe(self._advance, position)

    def _advance(self, position: int) -> None:
        self._hashed = max(self._hashed, min(position, self._stop))
        idle = self._running is None or self._running.done()
        if idle and self._failure is None and self._hashed > self._sent:
            self._running = asyncio.ensure_future(self._send_hashed())
            self._running.add_done_callback(self._note_failure)

    def _note_failure(self, send: asyncio.Future[None]) -> None:
        if not send.cancelled() and send.exception() is not None:
            self._failure = send.exception()

    async def _send_hashed(self) -> None:
        while self._sent < self._hashed:
            offset, count = self._sent, self._hashed - self._sent
            sent = await self._send_file(self._file, offset, count)
            if sent != count:  # the file ends early: sendfile stops short rather than fail
                raise EOFError(offset + sent)
            self._sent += count

    async def finish(self) -> None:
        """Wait until all of [start, stop) is sent, once it is all hashed; raises a failed send's error."""
        self._advance(self._stop)
        if self._running is not None:
            await self._running

    async def stop(self) -> None:
        """End the hash and cancel a send still running (the send is over: done, failed or cancelled)."""
        if self._failure is None:
            self._failure = _SendStopped()
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
