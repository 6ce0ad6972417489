"""Disk tier small-blob fast path (group commit through the journal): same guarantees as streaming.

Wrong bytes are rejected with nothing stored, the hard cap and a full filesystem are `StoreFull`, reservations
are held from before the first byte until the write ends, and concurrent writes all land durably.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os

import pytest

from micd import libc
from micd.errors import StoreFull
from micd.store import Digest
from micd.tiers.disk import DiskTier, FilesystemFull
from micd.tiers.disk import files as disk_files
from micd.tiers.disk import journal as disk_journal
from micd.tiers.disk import store as disk_store
from mickernel.errors import IntegrityError
from tests.micd.helpers import blob, chunked, start_held_put, temp_files


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 30, "hard_cap": 1 << 30, "verify_limit": 64 << 10}


def assert_nothing_stored(tier: DiskTier, digest: Digest) -> None:
    assert not tier.layout.blob_path(digest).exists()
    assert temp_files(tier) == []
    assert tier.used_bytes == 0 and tier.entry_count == 0
    assert tier.stats()["reserved_bytes"] == 0


def bad_uploads(data: bytes) -> list[tuple[Digest, bytes]]:
    digest = Digest.of(data)
    flipped = bytes([data[0] ^ 1]) + data[1:]
    return [
        (digest, flipped),  # same size, wrong bytes
        (digest, data + b"!"),  # one byte too many
        (digest, data[:-1]),  # one byte short
        (Digest(digest.function, digest.hex, digest.size + 1), data),  # size announced wrong
    ]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("how", ["put_bytes", "put"])
async def test_wrong_bytes_are_rejected_and_nothing_is_stored(make_tier, case, how):
    tier = await make_tier()
    digest, data = bad_uploads(blob(4096, seed=1))[case]
    with pytest.raises(IntegrityError):
        if how == "put_bytes":
            await tier.put_bytes(digest, data)
        else:
            await tier.put(digest, chunked(data))
    assert_nothing_stored(tier, digest)
    assert await tier.find_missing([digest]) == [digest]


async def test_wrong_bytes_for_a_stored_blob_are_rejected_and_the_blob_is_intact(make_tier):
    tier = await make_tier()
    data = blob(4096, seed=2)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    with pytest.raises(IntegrityError):
        await tier.put_bytes(digest, data[:-1] + b"\x00")
    await tier.put_bytes(digest, data)  # idempotent with the right bytes
    assert tier.layout.blob_path(digest).read_bytes() == data
    assert tier.used_bytes == 4096 and tier.stats()["reserved_bytes"] == 0


async def test_concurrent_small_puts_share_one_journal_sync_and_never_hop_to_the_default_pool(
    make_tier, monkeypatch
):
    tier = await make_tier()
    first = blob(100, seed=30)
    await tier.put_bytes(Digest.of(first), first)  # creates the journal segment (its own fsyncs)
    pool = [blob(4096, seed=40 + i) for i in range(16)]
    calls: list[str] = []
    real_to_thread, real_fdatasync = asyncio.to_thread, disk_journal.os.fdatasync

    async def counting_to_thread(fn, *args, **kw):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real_to_thread(fn, *args, **kw)

    def counting_fdatasync(fd):
        calls.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(disk_store.asyncio, "to_thread", counting_to_thread)
    monkeypatch.setattr(disk_journal.os, "fdatasync", counting_fdatasync)
    monkeypatch.setattr(disk_files.os, "fsync", lambda fd: calls.append("fsync"))
    await asyncio.gather(*(tier.put_bytes(Digest.of(b), b) for b in pool[:8]))
    await asyncio.gather(*(tier.put(Digest.of(b), chunked(b)) for b in pool[8:]))
    assert calls == ["fdatasync", "fdatasync"]  # one durable journal write per batch, no fsync per file
    monkeypatch.undo()
    for data in pool:
        assert await tier.get_bytes(Digest.of(data)) == data


async def test_streamed_small_put_holds_its_reservation_until_it_ends(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    data = blob(6000, seed=4)
    task = await start_held_put(tier, data, asyncio.Event(), head=10)
    assert tier.stats()["reserved_bytes"] == 6000
    other = blob(5000, seed=5)
    with pytest.raises(StoreFull):  # 6000 in flight + 5000 > 10,000, and nothing is evictable
        await tier.put_bytes(Digest.of(other), other)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_stored(tier, Digest.of(data))
    await tier.put_bytes(Digest.of(other), other)  # the cancelled upload released its reservation


async def test_hard_cap_on_the_fast_path_is_store_full_or_evicts(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    kept = [(Digest.of(b), b) for b in (blob(2000, seed=s) for s in range(5))]
    for digest, data in kept:
        await tier.put_bytes(digest, data)
    assert tier.used_bytes == 10_000
    before = tier.evictions
    await tier.put_bytes(*kept[2])  # already stored: succeeds at a full cap without evicting anything
    assert tier.evictions == before and await tier.find_missing([d for d, _ in kept]) == []
    big = blob(10_001, seed=9)
    with pytest.raises(StoreFull, match="hard cap of 10000 bytes"):
        await tier.put_bytes(Digest.of(big), big)
    assert tier.used_bytes == 10_000 and tier.stats()["reserved_bytes"] == 0
    new = blob(2000, seed=10)
    await tier.put_bytes(Digest.of(new), new)  # room made by evicting the least recently used
    assert tier.used_bytes <= 10_000 and tier.evictions == before + 1
    assert await tier.get_bytes(Digest.of(new)) == new


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_filesystem_full_on_the_fast_path_is_store_full_and_leaves_nothing(
    make_tier, monkeypatch, code
):
    tier = await make_tier()

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(disk_files.os, "write", failing_write)
    data = blob(4096, seed=11)
    with pytest.raises(FilesystemFull):
        await tier.put_bytes(Digest.of(data), data)
    monkeypatch.undo()
    assert_nothing_stored(tier, Digest.of(data))
    await tier.put_bytes(Digest.of(data), data)
    assert await tier.get_bytes(Digest.of(data)) == data


async def test_the_journal_is_durable_before_the_name_is_visible(make_tier, monkeypatch):
    tier = await make_tier()
    data = blob(4096, seed=12)
    final = tier.layout.blob_path(Digest.of(data))
    seen: list[bool] = []
    real_fdatasync = disk_journal.os.fdatasync

    def checking_fdatasync(fd):
        seen.append(final.exists())
        real_fdatasync(fd)

    monkeypatch.setattr(disk_journal.os, "fdatasync", checking_fdatasync)
    await tier.put_bytes(Digest.of(data), data)
    assert seen == [False] and final.read_bytes() == data


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
async def test_a_filesystem_without_unnamed_files_publishes_through_named_temp_files(
    make_tier, monkeypatch, code
):
    """NFS, CIFS, older FUSE/overlayfs refuse `open(dir, O_TMPFILE)`: small puts still land, and only the first
    one tries."""
    tier = await make_tier()
    real_open = os.open
    tries: list[int] = []

    def open_without_tmpfile(path, flags, *args, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            tries.append(flags)
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(disk_files.os, "open", open_without_tmpfile)
    await _three_puts_land_and_leave_nothing(tier, monkeypatch, tries, seed=300)


async def _three_puts_land_and_leave_nothing(tier, monkeypatch, tries: list, seed: int) -> None:
    """With the unnamed-file path failing (patched by the caller): three small puts all land, the failing
    path was tried once only, and no temp file is left."""
    pool = [blob(4096, seed=seed + i) for i in range(3)]
    for data in pool:
        await tier.put_bytes(Digest.of(data), data)
    monkeypatch.undo()
    assert len(tries) == 1
    assert [await tier.get_bytes(Digest.of(data)) for data in pool] == pool
    assert temp_files(tier) == []


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EPERM])
async def test_a_failing_link_through_proc_publishes_through_named_temp_files(make_tier, monkeypatch, code):
    """No /proc (ENOENT) or a restricted one (EPERM): linkat cannot name the unnamed file, so the same bytes are
    published through a named temp file, and later puts skip the unnamed file."""
    tier = await make_tier()
    tries: list[bytes] = []

    def failing_linkat(olddirfd, oldpath, newdirfd, newpath, flags):
        tries.append(newpath)
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(libc, "linkat", failing_linkat)
    await _three_puts_land_and_leave_nothing(tier, monkeypatch, tries, seed=310)


async def test_concurrent_small_puts_all_land_and_a_fresh_instance_reads_them(make_tier, tmp_path):
    tier = await make_tier()
    pool = [blob(4096, seed=100 + i) for i in range(64)]
    digests = [Digest.of(b, "blake3" if i % 2 else "sha256") for i, b in enumerate(pool)]
    await asyncio.gather(*(tier.put_bytes(d, b) for d, b in zip(digests, pool, strict=True)))
    assert tier.used_bytes == 64 * 4096 and tier.stats()["reserved_bytes"] == 0
    assert temp_files(tier) == []
    other = await make_tier(tmp_path / "cache")
    assert await other.find_missing(digests) == []
    for digest, data in zip(digests, pool, strict=True):
        assert await other.get_bytes(digest) == data


async def test_find_missing_sees_other_processes_writes_and_evictions(make_tier, tmp_path):
    first = await make_tier()
    second = await make_tier(tmp_path / "cache")
    pool = [blob(1000, seed=200 + i) for i in range(10)]
    digests = [Digest.of(b) for b in pool]
    for digest, data in zip(digests, pool, strict=True):
        await first.put_bytes(digest, data)
    assert await second.find_missing(digests) == []  # written by another process: found
    await second.evict(0)  # evicts everything it knows of
    assert await first.find_missing(digests) == digests  # evicted by another process: a miss
    assert first.entry_count == 0
