"""Batch calls in process hold at most `BATCH_BUDGET` blob bytes at once (issue 10, item 11): each call's
parse, copies and response hold its bytes several times over, so unbounded concurrency grew the daemon's
memory with the client count. The rest wait, holding only their request, and all complete."""

from __future__ import annotations

import asyncio

from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.cas import BATCH_BUDGET
from tests.protocols.bazel_support import blob, new_store, pd, reapi_server

SIZE = 3 << 20
CALLS = 12
ALLOWED = BATCH_BUDGET // SIZE  # calls of SIZE bytes that fit the budget at once


class _HeldStore:
    """Wraps the composed store: puts and batch reads wait on `release`, counting calls inside the store."""

    def __init__(self) -> None:
        self._store = new_store()
        self.release = asyncio.Event()
        self.inside = self.most = 0

    async def _held(self, call):
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await self.release.wait()
            return await call
        finally:
            self.inside -= 1

    async def put_bytes(self, digest, data):
        return await self._held(self._store.put_bytes(digest, data))

    async def get_many_bytes(self, digests):
        return await self._held(self._store.get_many_bytes(digests))

    def __getattr__(self, name):
        return getattr(self._store, name)


async def _settle(store: _HeldStore) -> None:
    """Let every call that can enter the store do so (a negative check: more entering is the failure)."""
    for _ in range(50):
        await asyncio.sleep(0.02)
    assert store.inside == ALLOWED, (store.inside, ALLOWED)


async def test_batch_updates_beyond_the_budget_wait_their_turn():
    store = _HeldStore()
    blobs = [blob(SIZE) for _ in range(CALLS)]
    async with reapi_server(store) as reapi:
        calls = [
            asyncio.ensure_future(
                reapi.cas.BatchUpdateBlobs(
                    re_pb2.BatchUpdateBlobsRequest(
                        requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(digest), data=data)]
                    )
                )
            )
            for data, digest in blobs
        ]
        await _settle(store)
        store.release.set()
        for response in await asyncio.gather(*calls):
            assert [r.status.code for r in response.responses] == [0]
    assert store.most == ALLOWED
    for data, digest in blobs:
        assert await store._store.get_bytes(digest) == data


async def test_batch_reads_beyond_the_budget_wait_their_turn():
    store = _HeldStore()
    data, digest = blob(SIZE)
    await store._store.put_bytes(digest, data)
    async with reapi_server(store) as reapi:
        request = re_pb2.BatchReadBlobsRequest(digests=[pd(digest)])
        calls = [asyncio.ensure_future(reapi.cas.BatchReadBlobs(request)) for _ in range(CALLS)]
        await _settle(store)
        store.release.set()
        for response in await asyncio.gather(*calls):
            assert [r.data for r in response.responses] == [data]
    assert store.most == ALLOWED

