"""Concurrent uploads hold a bounded number of bytes in memory, whatever the client count: small blobs are
gathered whole only within a byte budget (others stream to a temp file), and streamed uploads hold their
batches within the same budget, so RSS does not grow by ~1.6 MiB per extra concurrent 1 MiB upload.

Bytes held are counted, not RSS: what the clients sent minus what reached the tier's temp files. Every client
sends all but its last chunk, then waits; the count is taken once every upload either waits for its client
there or waits for budget (deterministic: no timing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from micd.store import Digest
from micd.tiers.disk import DiskTier
from tests.micd.helpers import blob, temp_files, wait_until

BUDGET = 4 << 20
CHUNK = 64 << 10


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 34, "hard_cap": 1 << 35, "verify_limit": 64 << 10, "ingest_budget": BUDGET}


@pytest.mark.parametrize(
    ("size", "clients"),
    [(1 << 20, 24), (6 << 20, 8)],
    ids=["small blobs (gathered)", "large blobs (streamed)"],
)
async def test_bytes_held_by_concurrent_uploads_stay_within_the_budget(make_tier, size, clients):
    tier: DiskTier = await make_tier()
    release = asyncio.Event()
    sent, at_end = [0], [0]

    async def client(data: bytes) -> AsyncIterator[bytes]:
        last = len(data) - CHUNK
        for pos in range(0, last, CHUNK):
            sent[0] += CHUNK
            yield data[pos : pos + CHUNK]
        at_end[0] += 1
        await release.wait()
        yield data[last:]

    uploads = [blob(size, seed) for seed in range(clients)]
    tasks = [asyncio.create_task(tier.put(Digest.of(data), client(data))) for data in uploads]
    try:
        await wait_until(lambda: at_end[0] + tier.stats().get("ingest_waiting", 0) == clients, timeout=60)
        written = sum(path.stat().st_size for path in temp_files(tier))
        # The budget, plus the one chunk each upload received before it could ask for budget.
        assert sent[0] - written <= BUDGET + clients * CHUNK
    finally:
        release.set()
    await asyncio.gather(*tasks)
    for data in uploads:
        assert await tier.get_bytes(Digest.of(data)) == data
    assert tier.stats()["ingest_held_bytes"] == 0 and tier.stats()["reserved_bytes"] == 0
