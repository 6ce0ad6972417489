"""Memory tier: an LRU bounded by bytes that verifies every write."""

from __future__ import annotations

import pytest

from micd.blobs import aiter_bytes
from micd.store import Digest, Record
from micd.tiers.memory import MemoryTier
from mickernel.errors import IntegrityError


def d(data: bytes) -> Digest:
    return Digest.of(data)


async def fill(tier: MemoryTier, *blobs: bytes) -> None:
    for data in blobs:
        await tier.put_bytes(d(data), data)


async def test_evicts_least_recently_used_by_bytes():
    tier = MemoryTier(budget=300, max_blob=300)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    await fill(tier, a, b, c)
    assert tier.used == 300
    await fill(tier, b"d" * 50)
    assert await tier.find_missing([d(a), d(b), d(c)]) == [d(a)]
    assert tier.used == 250


async def test_reads_refresh_recency():
    tier = MemoryTier(budget=300, max_blob=300)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    await fill(tier, a, b, c)
    assert await tier.get_bytes(d(a)) == a
    handle = await tier.get(d(b))
    await handle.aclose()
    await fill(tier, b"d" * 100)
    assert await tier.find_missing([d(a), d(b), d(c)]) == [d(c)]


async def test_one_large_insert_evicts_several():
    tier = MemoryTier(budget=300, max_blob=300)
    await fill(tier, b"a" * 100, b"b" * 100, b"c" * 100)
    big = b"z" * 250
    await fill(tier, big)
    assert tier.used == 250
    assert await tier.get_bytes(d(big)) == big


async def test_blob_above_max_blob_is_verified_but_not_kept():
    tier = MemoryTier(budget=1000, max_blob=100)
    kept = b"k" * 100
    await fill(tier, kept)
    big = b"x" * 101
    await tier.put_bytes(d(big), big)
    assert await tier.get(d(big)) is None
    assert tier.used == 100 and await tier.get_bytes(d(kept)) == kept
    with pytest.raises(IntegrityError):
        await tier.put_bytes(d(big), b"y" * 101)


async def test_default_max_blob_is_a_quarter_of_the_budget():
    tier = MemoryTier(budget=400)
    assert tier.max_blob == 100


async def test_wrong_bytes_are_rejected_and_not_stored():
    tier = MemoryTier(budget=1000)
    data = b"hello"
    with pytest.raises(IntegrityError):
        await tier.put(d(data), aiter_bytes(b"hellO"))
    with pytest.raises(IntegrityError):
        await tier.put(d(data), aiter_bytes(b"hello!"))
    assert await tier.get(d(data)) is None and tier.used == 0


async def test_insert_skips_empty_duplicates_and_oversized():
    tier = MemoryTier(budget=200, max_blob=100)
    tier.insert(Digest.empty(), b"")
    tier.insert(d(b"a" * 10), b"a" * 10)
    tier.insert(d(b"a" * 10), b"a" * 10)
    tier.insert(d(b"b" * 150), b"b" * 150)
    assert tier.used == 10
    assert await tier.find_missing([d(b"b" * 150)]) == [d(b"b" * 150)]


async def test_zero_budget_keeps_nothing_but_the_empty_blob():
    tier = MemoryTier(budget=0)
    await fill(tier, b"a")
    assert await tier.get(d(b"a")) is None
    assert await tier.contains(Digest.empty(function="blake3"))


def test_negative_budget_is_rejected():
    with pytest.raises(ValueError, match="budget"):
        MemoryTier(budget=-1)


async def test_records_are_kept_per_namespace_and_key():
    tier = MemoryTier()
    await tier.put_record("a", "k", Record(b"1"))
    await tier.put_record("b", "k", Record(b"2"))
    assert await tier.get_record("a", "k") == Record(b"1")
    assert await tier.get_record("b", "k") == Record(b"2")
    assert await tier.get_record("a", "x") is None


async def test_resolve_forgets_evicted_blobs():
    tier = MemoryTier(budget=200, max_blob=200)
    a, b = b"a" * 100, b"b" * 150
    await fill(tier, a)
    assert await tier.resolve("sha256", d(a).hex) == d(a)
    await fill(tier, b)  # evicts a
    assert await tier.resolve("sha256", d(a).hex) is None
    assert await tier.resolve("sha256", d(b).hex) == d(b)
