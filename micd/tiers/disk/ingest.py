"""Ingest helpers of the disk tier's write paths: pipelined hash-and-write,
small-upload gathering, and the error a full filesystem becomes. Split from `store.py` to keep that module
about state and policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from micd.blobs import Hashing
from micd.budget import ByteBudget
from micd.errors import StoreFull
from micd.store import Digest
from micd.tiers.disk import files
from mickernel.errors import IntegrityError

__all__ = ["WRITE_BATCH", "FilesystemFull", "Pipeline", "collect"]

WRITE_BATCH = 4 << 20  # bytes gathered before one worker-thread write: bounded memory, few thread hops
_PARALLEL_MIN = 1 << 20


class FilesystemFull(StoreFull):
    """The filesystem itself ran out of space or quota mid-write (the temp file was removed)."""

    def __init__(
        self, root: Path, used: int, needed: int, hard_cap: int, reason: str, *, reserved: int = 0
    ) -> None:
        super().__init__(used, needed, hard_cap, reserved=reserved)
        message = (
            f"cache store full: the filesystem holding {root} refused a {needed}-byte write ({reason})"
            " (free space on that filesystem or lower store.disk_hard_cap)"
        )
        self.args = (message,)


class Pipeline:
    """Hashes and writes one batch in worker threads while the event loop receives the next.

    At most one batch is in flight, so hashing stays in order; the budget a batch holds is given back once it
    is written (or failed).
    """

    def __init__(self, writer: files.TempWriter, verifier: Hashing, budget: ByteBudget) -> None:
        self._writer = writer
        self._verifier = verifier
        self._budget = budget
        self._inflight: asyncio.Future[None] | None = None

    async def submit(self, batch: list[bytes], nbytes: int, held: int) -> None:
        """Start `batch`, which holds `held` bytes of budget, once the previous one is done (raising its
        error, if any; `batch`'s budget is then given back)."""
        try:
            await self.flush()
        except BaseException:
            self._budget.give(held)
            raise
        self._inflight = asyncio.ensure_future(self._write(batch, nbytes, held))

    async def _write(self, batch: list[bytes], nbytes: int, held: int) -> None:
        try:
            await _hash_and_write(self._writer, batch, nbytes, self._verifier)
        finally:
            self._budget.give(held)

    async def flush(self) -> None:
        """Wait for the batch in flight."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def settle(self) -> None:
        """On an error path: let the batch in flight finish (its threads hold the temp file) and drop its
        result, since the upload is failing anyway."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await asyncio.gather(inflight, return_exceptions=True)


async def _hash_and_write(
    writer: files.TempWriter, batch: list[bytes], nbytes: int, verifier: Hashing
) -> None:
    """Hash and write one batch; big batches in two threads at once (both release the GIL), so ingest
    costs max(hash, write) rather than their sum. Excess bytes a bad upload writes die with the temp file."""
    if nbytes < _PARALLEL_MIN:
        await asyncio.to_thread(writer.write, batch, verifier)
        return
    await asyncio.gather(
        asyncio.to_thread(_hash_all, verifier, batch), asyncio.to_thread(writer.write, batch, None)
    )


def _hash_all(verifier: Hashing, batch: list[bytes]) -> None:
    for chunk in batch:
        verifier.update(chunk)


async def collect(digest: Digest, chunks: AsyncIterator[bytes]) -> bytes:
    """The whole upload of a small blob in memory; IntegrityError as soon as it passes `digest.size` bytes."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > digest.size:
            raise IntegrityError(str(digest), f"more than {digest.size} bytes", what="upload size")
        parts.append(chunk)
    return b"".join(parts)
