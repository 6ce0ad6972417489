"""Reservations under the hard cap: reported apart from the bytes stored, and released when a write is
cancelled or fails, whichever write path it took (streamed, gathered small blob, group commit, record).

Deterministic: each write is held on an event at the point where it is cancelled.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator

import pytest

from micd.errors import StoreFull
from micd.store import Digest, Record
from micd.tiers.disk import DiskTier
from micd.tiers.disk import files as disk_files
from micd.tiers.disk import journal as disk_journal
from mickernel.errors import IntegrityError
from tests.micd.helpers import blob, start_held_put, temp_files, wait_until


async def test_store_full_and_stats_report_used_and_reserved_apart(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    stored = blob(2000, seed=1)
    await tier.put_bytes(Digest.of(stored), stored)
    release = asyncio.Event()
    held = await start_held_put(tier, blob(7000, seed=2), release)
    assert tier.stats()["used_bytes"] == 2000 and tier.stats()["reserved_bytes"] == 7000
    other = blob(3500, seed=3)
    with pytest.raises(StoreFull) as info:
        await tier.put_bytes(Digest.of(other), other)
    assert (info.value.used, info.value.needed) == (2000, 3500)
    assert info.value.reserved >= 7000
    assert f"2000 bytes used + {info.value.reserved} reserved" in str(info.value)
    release.set()
    await held


async def held_client(data: bytes, sent: int, arrived: asyncio.Event) -> AsyncIterator[bytes]:
    """Sends `sent` bytes of `data`, then never the rest (the test cancels the upload)."""
    yield data[:sent]
    arrived.set()
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    "size", [1000, 3 << 20], ids=["small blob, gathered in memory", "large blob, streamed to a temp file"]
)
async def test_a_put_cancelled_mid_stream_releases_its_reservation_and_budget(make_tier, size):
    tier: DiskTier = await make_tier(soft_cap=1 << 30, hard_cap=1 << 30)
    data = blob(size, seed=4)
    arrived = asyncio.Event()
    task = asyncio.create_task(tier.put(Digest.of(data), held_client(data, size // 2, arrived)))
    await arrived.wait()
    await wait_until(lambda: tier.stats()["reserved_bytes"] == size)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: temp_files(tier) == [])
    assert tier.stats()["reserved_bytes"] == 0 and tier.stats()["ingest_held_bytes"] == 0
    assert await tier.find_missing([Digest.of(data)]) == [Digest.of(data)]


async def test_a_small_put_cancelled_in_the_group_commit_releases_its_reservation(make_tier, monkeypatch):
    tier: DiskTier = await make_tier(soft_cap=1 << 30, hard_cap=1 << 30)
    entered, proceed = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    real_append = disk_journal.Journal.append

    def held_append(journal, entries):
        loop.call_soon_threadsafe(entered.set)
        asyncio.run_coroutine_threadsafe(proceed.wait(), loop).result(30)
        return real_append(journal, entries)

    monkeypatch.setattr(disk_journal.Journal, "append", held_append)
    data = blob(1000, seed=5)
    task = asyncio.create_task(tier.put_bytes(Digest.of(data), data))
    await entered.wait()
    assert tier.stats()["reserved_bytes"] == 1000
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tier.stats()["reserved_bytes"] == 0
    proceed.set()  # the commit still stores it, and counts it
    await wait_until(lambda: tier.used_bytes == 1000)
    assert tier.stats()["reserved_bytes"] == 0


@pytest.mark.parametrize("kind", ["streamed blob", "small blob", "record"])
async def test_a_failed_write_releases_its_reservation(make_tier, monkeypatch, kind):
    tier: DiskTier = await make_tier(soft_cap=1 << 30, hard_cap=1 << 30)
    if kind == "record":

        def failing_write(writer, chunks, verifier):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(disk_files.TempWriter, "write", failing_write)
        with pytest.raises(OSError):
            await tier.put_record("ns", "k", Record(b"v" * 100))
    else:
        data = blob(1000 if kind == "small blob" else 3 << 20, seed=6)
        with pytest.raises(IntegrityError):
            await tier.put(Digest.of(data), held_wrong(data))
    assert tier.stats()["reserved_bytes"] == 0 and tier.stats()["ingest_held_bytes"] == 0
    assert temp_files(tier) == []


async def held_wrong(data: bytes) -> AsyncIterator[bytes]:
    yield data[:-1] + bytes([data[-1] ^ 1])
