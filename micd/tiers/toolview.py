"""Per-tool views of a `TieredStore`: what `for_tool(name)` hands to a protocol module.

Each view forwards to the store with its tool label (so tier-level metrics are per tool) and reports the
outcome seen by the client (hit, miss or put, bytes and latency) under the tier label "all". A view reads and
writes only the KV namespaces its tool declared (micd/frontend.py): one tool can never read or overwrite
another's records, whatever namespace string a bug or a client-chosen instance name produces.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from micd.store import Blob, Digest, Record

if TYPE_CHECKING:
    from micd.tiers.tiered import TieredStore

__all__ = ["ForeignNamespace", "ToolView"]


class ForeignNamespace(RuntimeError):
    """A tool asked for a KV namespace it did not declare: a bug in its protocol module, never a client error."""


class ToolView:
    """What a protocol module receives: the store's operations, labelled with one tool for metrics."""

    def __init__(
        self,
        store: TieredStore,
        tool: str,
        report: Callable[[str, int, float], None],
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self.tool = tool
        self.namespaces = namespaces
        self._done = report  # (event, nbytes, started): the store's metrics for this tool, all tiers

    def _check_namespace(self, namespace: str) -> None:
        if not any(namespace == own or namespace.startswith(own + "/") for own in self.namespaces):
            raise ForeignNamespace(f"tool {self.tool} does not own the KV namespace {namespace!r}")

    async def contains(self, digest: Digest) -> bool:
        return await self._store.contains(digest, tool=self.tool)

    async def contains_locally(self, digest: Digest) -> bool:
        return await self._store.contains_locally(digest)

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        return await self._store.find_missing(digests, tool=self.tool)

    async def resolve(self, function: str, hex_: str) -> Digest | None:
        return await self._store.resolve(function, hex_, tool=self.tool)

    async def get(self, digest: Digest, offset: int = 0, limit: int | None = None) -> Blob | None:
        started = time.perf_counter()
        blob = await self._store.get(digest, offset, limit, tool=self.tool)
        self._done("miss" if blob is None else "hit", 0 if blob is None else blob.length, started)
        return blob

    async def get_bytes(self, digest: Digest) -> bytes | None:
        started = time.perf_counter()
        data = await self._store.get_bytes(digest, tool=self.tool)
        self._done("miss" if data is None else "hit", 0 if data is None else len(data), started)
        return data

    async def get_many_bytes(self, digests: Sequence[Digest]) -> list[bytes | None]:
        started = time.perf_counter()
        found = await self._store.get_many_bytes(digests, tool=self.tool)
        for data in found:
            self._done("miss" if data is None else "hit", 0 if data is None else len(data), started)
        return found

    async def put(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        started = time.perf_counter()
        await self._store.put(digest, chunks, tool=self.tool)
        self._done("put", digest.size, started)

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> Digest:
        started = time.perf_counter()
        digest = await self._store.put_stream(function, chunks, size, tool=self.tool)
        self._done("put", digest.size, started)
        return digest

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        started = time.perf_counter()
        await self._store.put_bytes(digest, data, tool=self.tool)
        self._done("put", digest.size, started)

    async def get_record(self, namespace: str, key: str) -> Record | None:
        self._check_namespace(namespace)
        started = time.perf_counter()
        record = await self._store.get_record(namespace, key, tool=self.tool)
        self._done("miss" if record is None else "hit", 0 if record is None else len(record.value), started)
        return record

    async def put_record(self, namespace: str, key: str, record: Record) -> None:
        self._check_namespace(namespace)
        started = time.perf_counter()
        await self._store.put_record(namespace, key, record, tool=self.tool)
        self._done("put", len(record.value), started)
