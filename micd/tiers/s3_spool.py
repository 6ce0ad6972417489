"""Shared S3 downloads: one spool (bytes in memory, or a verified anonymous temp file) read by many handles.

`S3Tier.get` starts one download per digest; concurrent readers join its `SpoolEntry` and each gets a
`SpoolBlob` (or a `BytesBlob` for small blobs) over the same verified spool. The temp file closes when the
download has finished and the last handle is released, so a spool never outlives its readers nor leaks.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from micd.blobs import CHUNK, BytesBlob, Verifier, clamp_range
from mickernel.errors import IntegrityError

__all__ = ["Sink", "SpoolBlob", "SpoolEntry", "retrieve_exception", "temp_file"]


class SpoolEntry:
    """One shared download: its task (→ bytes, a verified temp file, or None) and the readers holding it.

    The temp file is closed when the download is done and the last reader let go.
    """

    def __init__(self, task: asyncio.Task[bytes | IO[bytes] | None], size: int) -> None:
        self.task = task
        self.size = size
        self.refs = 0

    async def open(self, offset: int, limit: int | None) -> BytesBlob | SpoolBlob | None:
        self.refs += 1
        try:
            result = await asyncio.shield(self.task)
        except BaseException:
            self.release()
            raise
        if result is None or isinstance(result, bytes):
            self.release()
            return None if result is None else BytesBlob(result, offset, limit)
        return SpoolBlob(self, result, offset, limit)

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self._close_if_done()

    def finished(self) -> None:
        retrieve_exception(self.task)
        if self.refs == 0:
            self._close_if_done()

    def _close_if_done(self) -> None:
        if self.task.done() and not self.task.cancelled() and self.task.exception() is None:
            result = self.task.result()
            if result is not None and not isinstance(result, bytes):
                result.close()


class SpoolBlob:
    """A `Blob` over a verified download spooled to an anonymous temp file (shared by concurrent readers)."""


    def __init__(self, entry: SpoolEntry, file: IO[bytes], offset: int, limit: int | None) -> None:
        self.size = entry.size
        self.offset = offset
        self.length = clamp_range(self.size, offset, limit)
        self._entry = entry
        self._file = file
        self._open = True

    def view(self, offset: int = 0, limit: int | None = None) -> SpoolBlob:
        """Another handle on the same spool (no new download); the caller must close it too."""
        if not self._open:
            raise RuntimeError("view() of a closed blob")
        clamp_range(self.size, offset, limit)
        self._entry.refs += 1
        return SpoolBlob(self._entry, self._file, offset, limit)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the range in ≤ 1 MiB chunks read from the spool; closes the handle at the end."""
        try:
            pos, end = self.offset, self.offset + self.length
            while pos < end:
                data = await asyncio.to_thread(os.pread, self._file.fileno(), min(CHUNK, end - pos), pos)
                if not data:
                    raise IntegrityError(
                        f"{self.size} bytes", f"spool ended at {pos}", what="S3 download spool"
                    )
                pos += len(data)
                yield data
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release this handle; the spool closes with its last handle."""
        if self._open:
            self._open = False
            self._entry.release()


class Sink:
    """Write target of the streaming decompressor: verifies each output chunk before spooling it."""

    def __init__(self, spool: IO[bytes], verifier: Verifier) -> None:
        self._spool = spool
        self._verifier = verifier

    def write(self, data: bytes) -> int:
        self._verifier.update(data)  # raises as soon as the output exceeds the announced size
        return self._spool.write(data)


def temp_file(directory: Path | None) -> IO[bytes]:
    """An anonymous spool file (gone from the filesystem at once; blocking: call it in a thread)."""
    return tempfile.TemporaryFile(dir=directory)


def retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Done-callback: fetch a finished task's exception so asyncio never logs it as never retrieved."""
    if not task.cancelled():
        task.exception()
