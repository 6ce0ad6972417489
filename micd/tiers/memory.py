"""Memory tier: an LRU of small blobs and records bounded by a byte budget.

Also the reference in-memory `Store` that protocol tests run against.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence

from micd.blobs import BytesBlob, DigestBuilder, Verifier, aiter_bytes
from micd.store import EMPTY_HEX, Digest, Record

__all__ = ["MemoryTier"]


class MemoryTier:
    """LRU by bytes. Blobs larger than `max_blob` are verified but not kept (they would evict everything)."""

    def __init__(self, *, budget: int = 256 << 20, max_blob: int | None = None) -> None:
        if budget < 0:
            raise ValueError("memory budget must be ≥ 0")
        self.budget = budget
        self.max_blob = budget // 4 if max_blob is None else max_blob
        self.used = 0
        self._blobs: OrderedDict[Digest, bytes] = OrderedDict()
        self._by_hash: dict[tuple[str, str], Digest] = {}  # (function, hex) → each kept blob, for `resolve`
        self._records: dict[tuple[str, str], Record] = {}

    # -- CAS ---------------------------------------------------------------------------------------
    def _touch(self, digest: Digest) -> bytes | None:
        data = self._blobs.get(digest)
        if data is not None:
            self._blobs.move_to_end(digest)
        return data

    async def contains(self, digest: Digest) -> bool:
        return digest.is_empty or digest in self._blobs

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        blobs = self._blobs
        # `d.size or`: skips the is_empty call for the common non-empty digest
        return [d for d in digests if (d.size or not d.is_empty) and d not in blobs]

    async def resolve(self, function: str, hex_: str) -> Digest | None:
        if hex_ == EMPTY_HEX[function]:
            return Digest.empty(function)
        return self._by_hash.get((function, hex_))

    async def get(self, digest: Digest, offset: int = 0, limit: int | None = None) -> BytesBlob | None:
        data = b"" if digest.is_empty else self._touch(digest)
        return None if data is None else BytesBlob(data, offset, limit)

    async def get_bytes(self, digest: Digest) -> bytes | None:
        return b"" if digest.is_empty else self._touch(digest)

    async def get_many_bytes(self, digests: Sequence[Digest]) -> list[bytes | None]:
        return [b"" if d.is_empty else self._touch(d) for d in digests]

    async def put(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        verifier = Verifier(digest)
        parts = []
        keep = digest.size <= self.max_blob
        async for chunk in chunks:
            verifier.update(chunk)
            if keep:
                parts.append(chunk)
        verifier.check()
        if keep:
            self.insert(digest, b"".join(parts))

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> Digest:
        builder = DigestBuilder(function, size)
        parts: list[bytes] | None = [] if size is None or size <= self.max_blob else None
        async for chunk in chunks:
            builder.update(chunk)
            if parts is not None:
                parts.append(chunk)
                if builder.size > self.max_blob:
                    parts = None
        digest = builder.digest()
        if parts is not None:
            self.insert(digest, b"".join(parts))
        return digest

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        await self.put(digest, aiter_bytes(data))

    def insert(self, digest: Digest, data: bytes) -> None:
        """Cache bytes already verified by a lower tier (read-through fill)."""
        if digest.is_empty or len(data) > self.max_blob or digest in self._blobs:
            return
        self._blobs[digest] = data
        self._by_hash[(digest.function, digest.hex)] = digest
        self.used += len(data)
        while self.used > self.budget and self._blobs:
            evicted, old = self._blobs.popitem(last=False)
            del self._by_hash[(evicted.function, evicted.hex)]
            self.used -= len(old)

    # -- KV ----------------------------------------------------------------------------------------
    async def get_record(self, namespace: str, key: str) -> Record | None:
        # Tiers store records raw; the tiered store checks that referenced blobs exist.
        return self._records.get((namespace, key))

    async def put_record(self, namespace: str, key: str, record: Record) -> None:
        self._records[(namespace, key)] = record
