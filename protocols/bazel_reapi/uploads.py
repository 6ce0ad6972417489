"""Resumable ByteStream uploads: each upload is one `store.put` task fed through a small bounded queue.

Why a live task rather than a spool file: bytes stream straight into the store (hashed once, written once),
and when the client's stream breaks the task simply waits for more chunks, so a later Write with
`write_offset == committed_size` resumes where the first stopped. A paused upload is kept at most `max_age`
seconds and at most `max_paused` of them exist; past either bound the oldest is cancelled and the store
discards its partial data (nothing half-written is ever visible).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from micd.errors import BadRequest, IntegrityError
from micd.store import Cas
from protocols.bazel_reapi.common import UploadBusy
from protocols.bazel_reapi.resource import ResourceName

__all__ = ["Upload", "Uploads"]

_QUEUE_CHUNKS = 8


class Upload:
    """One in-progress upload. `committed` counts uncompressed bytes handed to the store."""

    def __init__(self, store: Cas, name: ResourceName) -> None:
        self.name = name
        self.committed = 0
        self.attached = False
        self.touched = time.monotonic()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self._task = asyncio.ensure_future(store.put(name.digest, self._chunks()))
        self._task.add_done_callback(self._on_done)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    def _on_done(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; re-raised to the writer by _check()
        # A writer blocked on a full queue must wake up and see the failure.
        while not self._queue.empty():
            self._queue.get_nowait()

    def _check(self) -> None:
        if self._task.done():
            if self._task.cancelled():
                raise BadRequest("upload was cancelled", str(self.name.digest))
            exc = self._task.exception()
            raise exc if exc is not None else BadRequest("upload ended before finish_write")

    async def feed(self, data: bytes) -> None:
        """Hand uncompressed bytes to the store; raises the store's error if it already failed."""
        self._check()
        if self.committed + len(data) > self.name.digest.size:
            raise IntegrityError(
                str(self.name.digest), f"more than {self.name.digest.size} bytes", what="upload size"
            )
        await self._queue.put(data)
        self._check()
        self.committed += len(data)

    async def finish(self) -> None:
        """End the stream and wait until the store verified and published the blob (or raised)."""
        self._check()
        await self._queue.put(None)
        await asyncio.shield(self._task)

    def cancel(self) -> None:
        self._task.cancel()


class Uploads:
    """Registry of in-progress uploads keyed by (upload id, digest, compressor), bounded in count and age."""

    def __init__(self, store: Cas, *, max_paused: int = 64, max_age: float = 600.0) -> None:
        self._store = store
        self._max_paused = max_paused
        self._max_age = max_age
        self._uploads: dict[tuple[str | None, str, str | None], Upload] = {}

    @staticmethod
    def _key(name: ResourceName) -> tuple[str | None, str, str | None]:
        return (name.upload_id, str(name.digest), name.compressor)

    def get(self, name: ResourceName) -> Upload | None:
        self._prune()
        return self._uploads.get(self._key(name))

    def attach(self, name: ResourceName, write_offset: int) -> Upload:
        """The upload a Write starting at `write_offset` continues (offset 0 starts afresh).

        Raises:
            UploadBusy: a live stream feeds this upload.
            BadRequest: `write_offset` is not where the upload stands.
        """
        upload = self.get(name)
        if upload is not None and upload.attached:
            raise UploadBusy(f"upload {name.upload_id} is being written by another stream")
        if upload is not None and write_offset == 0 and upload.committed != 0:
            self.discard(upload)
            upload = None
        if upload is None:
            if write_offset != 0:
                raise BadRequest("write_offset does not match the committed size 0", write_offset)
            upload = Upload(self._store, name)
            self._uploads[self._key(name)] = upload
        elif write_offset != upload.committed:
            raise BadRequest(
                f"write_offset does not match the committed size {upload.committed}", write_offset
            )
        upload.attached = True
        return upload

    def detach(self, upload: Upload) -> None:
        """The stream feeding `upload` ended without finishing: keep it resumable for `max_age` seconds, and
        check then even if no other ByteStream call comes (an abandoned upload holds a temp file)."""
        upload.attached = False
        upload.touched = time.monotonic()
        asyncio.get_running_loop().call_later(self._max_age + 0.01, self._prune)

    def done(self, upload: Upload) -> None:
        self._uploads.pop(self._key(upload.name), None)

    def discard(self, upload: Upload) -> None:
        upload.cancel()
        self.done(upload)

    def _prune(self) -> None:
        now = time.monotonic()
        paused = sorted((u for u in self._uploads.values() if not u.attached), key=lambda u: u.touched)
        for i, upload in enumerate(paused):
            if now - upload.touched > self._max_age or len(paused) - i > self._max_paused:
                self.discard(upload)

    def close(self) -> None:
        """Cancel every in-progress upload (daemon shutdown)."""
        for upload in list(self._uploads.values()):
            with contextlib.suppress(Exception):
                self.discard(upload)
