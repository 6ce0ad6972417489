"""TieredStore over memory + disk (no S3): small writes go through to memory, within its budget."""

from __future__ import annotations

import pytest

from micd.errors import StoreFull
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from mickernel.errors import IntegrityError
from tests.micd.helpers import blob, chunked


@pytest.fixture
async def make_store(tmp_path):
    made: list[TieredStore] = []

    async def make(budget: int = 10_000, hard_cap: int = 1 << 30, fill: int = 1 << 20) -> TieredStore:
        store = TieredStore(
            memory=MemoryTier(budget=budget),
            disk=DiskTier(tmp_path / "cache", soft_cap=hard_cap, hard_cap=hard_cap),
            memory_fill_limit=fill,
        )
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.mark.parametrize("how", ["put_bytes", "put"])
async def test_small_writes_go_through_to_memory_within_its_budget(make_store, how):
    store = await make_store(budget=10_000)  # max_blob = budget // 4 = 2500
    pool = [blob(1000, seed=i) for i in range(25)]
    for data in pool:
        if how == "put_bytes":
            await store.put_bytes(Digest.of(data), data)
        else:
            await store.put(Digest.of(data), chunked(data, 300))
        assert store.memory.used <= 10_000
    in_memory = [await store.memory.get_bytes(Digest.of(d)) for d in pool]
    assert in_memory[-10:] == pool[-10:]  # the newest fill the budget
    assert in_memory[:15] == [None] * 15  # older ones left memory ...
    for data in pool[:15]:  # ... and are still served (from disk)
        assert await store.get_bytes(Digest.of(data)) == data


async def test_blobs_above_the_fill_limit_are_not_kept_in_memory(make_store):
    store = await make_store(budget=1 << 20, fill=2000)
    small, big = blob(2000, seed=1), blob(2001, seed=2)
    await store.put(Digest.of(small), chunked(small, 300))
    await store.put(Digest.of(big), chunked(big, 300))
    assert await store.memory.get_bytes(Digest.of(small)) == small
    assert await store.memory.get_bytes(Digest.of(big)) is None
    assert await store.get_bytes(Digest.of(big)) == big


@pytest.mark.parametrize("how", ["put_bytes", "put"])
async def test_rejected_writes_reach_no_tier(make_store, how):
    store = await make_store(budget=1 << 20, hard_cap=5000)
    data = blob(1000, seed=3)
    digest = Digest.of(data)
    with pytest.raises(IntegrityError):
        if how == "put_bytes":
            await store.put_bytes(digest, data[:-1] + b"?")
        else:
            await store.put(digest, chunked(data + b"extra", 300))
    too_big = blob(6000, seed=4)
    with pytest.raises(StoreFull):
        if how == "put_bytes":
            await store.put_bytes(Digest.of(too_big), too_big)
        else:
            await store.put(Digest.of(too_big), chunked(too_big, 300))
    assert store.memory.used == 0
    assert await store.find_missing([digest, Digest.of(too_big)]) == [digest, Digest.of(too_big)]


async def test_a_fresh_blob_is_found_and_served_from_memory(make_store):
    store = await make_store(budget=1 << 20)
    data = blob(4096, seed=5)
    digest = Digest.of(data)
    await store.put_bytes(digest, data)
    store.disk.layout.blob_path(digest).unlink()  # another daemon evicted the disk copy
    assert await store.find_missing([digest]) == []  # the verified bytes are in memory: a real hit
    assert await store.get_bytes(digest) == data


async def test_get_many_bytes_serves_memory_in_one_pass_and_fills_misses_from_disk(make_store):
    store = await make_store(budget=10_000)
    hot, cold = blob(1000, seed=70), blob(1000, seed=71)
    await store.put_bytes(Digest.of(hot), hot)  # kept in memory too
    await store.disk.put_bytes(Digest.of(cold), cold)  # on disk only
    absent = Digest.of(blob(10, seed=72))
    view = store.for_tool("bazel")
    got = await view.get_many_bytes([Digest.of(cold), Digest.of(hot), absent, Digest.empty()])
    assert got == [cold, hot, None, b""]
    assert await store.memory.get_bytes(Digest.of(cold)) == cold  # the disk hit filled memory
    series = store.metrics.snapshot()["series"]
    assert series["bazel/memory/hit"]["count"] == 1 and series["bazel/memory/hit"]["bytes"] == 1000
    assert series["bazel/disk/hit"]["count"] == 1
    assert series["bazel/memory/miss"]["count"] == 2  # the cold blob and the absent one
    assert series["bazel/all/hit"]["count"] == 3 and series["bazel/all/miss"]["count"] == 1
