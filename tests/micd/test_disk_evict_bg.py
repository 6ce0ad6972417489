"""Soft-cap eviction runs in the background, ahead of need: the write that crosses the soft cap returns at
once (evicting ~2,000 files took seconds inside that request), and only the hard cap ever makes a request
wait for eviction.

Deterministic: the eviction's blocking victim check is held on an event while the request completes.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.disk import evict as disk_evict
from tests.micd.helpers import blob


async def put_many(tier: DiskTier, count: int, size: int, first_seed: int = 0) -> list[tuple[Digest, bytes]]:
    out = []
    for seed in range(first_seed, first_seed + count):
        data = blob(size, seed)
        await tier.put_bytes(Digest.of(data), data)
        out.append((Digest.of(data), data))
    return out


def hold_eviction(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold every eviction check until `proceed` is set; `entered` says one started."""
    entered, proceed = threading.Event(), threading.Event()
    real = disk_evict.check_and_unlink

    def held(*args):
        entered.set()
        proceed.wait(60)
        return real(*args)

    monkeypatch.setattr(disk_evict, "check_and_unlink", held)
    return entered, proceed


@pytest.mark.parametrize("size", [1000, 2 << 20], ids=["group-committed", "streamed"])
async def test_the_write_crossing_the_soft_cap_does_not_wait_for_eviction(make_tier, monkeypatch, size):
    tier = await make_tier(soft_cap=10 * size, hard_cap=20 * size)
    blobs = await put_many(tier, 10, size)
    entered, proceed = hold_eviction(monkeypatch)
    try:
        await asyncio.wait_for(put_many(tier, 1, size, first_seed=100), 30)  # returns while eviction is held
        assert await asyncio.to_thread(entered.wait, 30)  # eviction did start, in the background
        assert tier.evictions == 0
    finally:
        proceed.set()
    await tier.settled()
    assert tier.evictions == 2 and tier.used_bytes == 9 * size  # down to the low-water mark, oldest first
    assert await tier.find_missing([d for d, _ in blobs]) == [blobs[0][0], blobs[1][0]]
