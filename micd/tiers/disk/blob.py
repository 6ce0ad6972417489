"""`FileBlob`: a range of a large blob file, streamed in bounded chunks and verified on every read.

Every read hashes the whole file while serving the range (the bytes before the range are hashed without
being sent, the bytes after it before the stream ends) and withholds the last chunk until the hash is
checked. So a corrupt file yields `IntegrityError` and never a complete wrong stream; the receiver may have
seen a wrong prefix, which is why the error must abort its response.

Why every read, not only the first: a file once verified can still rot in place, or be edited with its
mtime put back, keeping inode, size and mtime; trusting it then served wrong bytes as a whole 200. The cost
is a hash per byte served (no sendfile). Three stages overlap: a worker thread hashes one batch, another reads
the next, and the caller sends; so a GET runs near the hash's own speed (bench/RESULTS.md, issue 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

from micd.blobs import CHUNK
from micd.store import Digest, new_hasher
from mickernel.errors import IntegrityError

__all__ = ["FileBlob"]

_BATCH = 8 * CHUNK  # bytes read per worker-thread call: amortises thread hand-off, bounds memory


class FileBlob:
    """An open blob file range. `aclose()` (or exhausting `chunks()`) closes the fd."""

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

    def _read(self, start: int, end: int, keep: bool) -> list[bytes]:
        """Read [start, end) in ≤ CHUNK pieces: kept (the caller hashes them) or hashed here and dropped.
        A short read means a damaged file."""
        out: list[bytes] = []
        with self._lock:
            if self._fd is None:
                raise ValueError("blob already closed")
            pos = start
            while pos < end:
                chunk = os.pread(self._fd, min(CHUNK, end - pos), pos)
                if not chunk:
                    raise EOFError(pos)
                if keep:
                    out.append(chunk)
                else:
                    self._hasher.update(chunk)
                pos += len(chunk)
        return out

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hasher.update(chunk)

    async def _hash_span(self, start: int, end: int) -> None:
        """Hash bytes outside the served range (read, never sent)."""
        for pos in range(start, end, _BATCH):
            await self._read_batch(pos, end, keep=False)

    async def _batches(self, start: int, end: int) -> AsyncIterator[list[bytes]]:
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

    def _read_batch(self, pos: int, end: int, *, keep: bool = True) -> Awaitable[list[bytes]]:
        """Read the batch at `pos` in a worker thread (see `_read` for `keep`)."""
        return asyncio.to_thread(self._read, pos, min(end, pos + _BATCH), keep)

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
                hashing, done = None, hashing
                await done
            await self._hash_span(end, self.size)
            got = self._hasher.hexdigest()
            if got != self._digest.hex:
                await self._on_corrupt()
                raise IntegrityError(self._digest.hex, got, what=f"stored blob {self._digest}")
            if pending is not None:
                yield pending
        except EOFError as exc:
            await self._on_corrupt()
            raise IntegrityError(
                str(self._digest), f"file ends at {exc.args[0]}", what="stored blob size"
            ) from exc
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
