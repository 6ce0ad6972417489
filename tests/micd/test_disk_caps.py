"""Disk tier caps: hard cap rejects cleanly (nothing changed), soft cap evicts least recently used first."""

from __future__ import annotations

import asyncio
import errno
import os
import time

import pytest

from micd import libc
from micd.errors import StoreFull
from micd.store import Digest, Record
from micd.tiers.disk import DiskTier, FilesystemFull
from micd.tiers.disk import files as disk_files
from tests.micd.helpers import blob, chunked, start_held_put, temp_files


async def put_many(tier: DiskTier, count: int, size: int, first_seed: int = 0) -> list[tuple[Digest, bytes]]:
    out = []
    for seed in range(first_seed, first_seed + count):
        data = blob(size, seed)
        digest = Digest.of(data)
        await tier.put_bytes(digest, data)
        out.append((digest, data))
    return out


@pytest.mark.parametrize(("soft", "hard"), [(0, 10), (10, 5), (-1, -1)])
def test_caps_are_validated(tmp_path, soft, hard):
    with pytest.raises(ValueError, match="soft_cap"):
        DiskTier(tmp_path, soft_cap=soft, hard_cap=hard)


async def test_blob_over_the_hard_cap_is_rejected_and_nothing_changes(make_tier):
    tier = await make_tier(soft_cap=8000, hard_cap=10_000)
    kept = await put_many(tier, 5, 1000)
    before = tier.stats()
    big = blob(10_001, seed=99)
    with pytest.raises(StoreFull, match="hard cap of 10000 bytes") as info:
        await tier.put_bytes(Digest.of(big), big)
    assert info.value.needed == 10_001 and info.value.hard_cap == 10_000
    # Nothing stored, evicted or held; only our idle headroom in the shared ledger may be given back.
    assert {k: v for k, v in tier.stats().items() if k != "root_claimed_bytes"} == {
        k: v for k, v in before.items() if k != "root_claimed_bytes"
    }
    for digest, data in kept:
        assert await tier.get_bytes(digest) == data
    assert not await tier.contains(Digest.of(big))
    assert temp_files(tier) == []


async def test_in_flight_reservations_count_against_the_hard_cap(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    kept = await put_many(tier, 2, 1000)
    slow_data = blob(7000, seed=50)
    release = asyncio.Event()
    slow = await start_held_put(tier, slow_data, release)
    assert tier.stats()["reserved_bytes"] == 7000
    other = blob(3500, seed=51)  # fits only if the in-flight 7000 bytes did not count
    with pytest.raises(StoreFull):
        await tier.put_bytes(Digest.of(other), other)
    for digest, data in kept:  # rejecting did not evict anything
        assert await tier.get_bytes(digest) == data
    release.set()
    await slow
    assert await tier.get_bytes(Digest.of(slow_data)) == slow_data


async def test_hard_cap_makes_room_by_evicting_least_recently_used(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    kept = await put_many(tier, 9, 1000)
    await tier.get_bytes(kept[0][0])  # now the most recently used
    big = blob(2500, seed=77)
    await tier.put_bytes(Digest.of(big), big)
    assert tier.used_bytes <= 10_000
    present = [not m for m in [d in await tier.find_missing([d]) for d, _ in kept]]
    assert present[0] and not present[1] and not present[2]
    assert await tier.get_bytes(Digest.of(big)) == big


async def test_records_count_against_the_hard_cap(make_tier):
    tier = await make_tier(soft_cap=100, hard_cap=100)
    with pytest.raises(StoreFull):
        await tier.put_record("ns", "k", Record(b"x" * 200))
    assert await tier.get_record("ns", "k") is None
    assert tier.used_bytes == 0


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_filesystem_full_mid_write_is_store_full_and_leaves_nothing(make_tier, monkeypatch, code):
    tier = await make_tier(soft_cap=1 << 30, hard_cap=1 << 30)
    kept = await put_many(tier, 2, 1000)
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(disk_files.os, "write", failing_write)
    data = blob(9 << 20, seed=60)  # several write batches: the first lands, a later one fails
    digest = Digest.of(data)
    with pytest.raises(FilesystemFull) as info:
        await tier.put_bytes(digest, data)
    assert isinstance(info.value, StoreFull)
    assert "filesystem" in str(info.value)
    monkeypatch.undo()
    assert temp_files(tier) == []
    assert not tier.layout.blob_path(digest).exists()
    assert tier.stats()["reserved_bytes"] == 0
    for d, b in kept:
        assert await tier.get_bytes(d) == b
    await tier.put_bytes(digest, data)  # space is back: the same upload works
    assert await tier.get_bytes(digest) == data


async def test_soft_cap_evicts_least_recently_used_first(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=20_000)
    blobs = await put_many(tier, 10, 1000)  # exactly at the soft cap: nothing evicted yet
    assert tier.evictions == 0
    await tier.get_bytes(blobs[0][0])  # reads and existence checks count as use
    assert await tier.find_missing([blobs[1][0]]) == []
    await put_many(tier, 1, 1000, first_seed=100)
    await tier.settled()  # the background pass it started
    # 11,000 > 10,000: evict down to 90% (9,000), oldest first, skipping the two just used.
    assert tier.evictions == 2 and tier.used_bytes == 9000
    missing = await tier.find_missing([d for d, _ in blobs])
    assert missing == [blobs[2][0], blobs[3][0]]
    assert not tier.layout.blob_path(blobs[2][0]).exists()


async def test_eviction_spares_a_blob_another_process_used(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=20_000)
    blobs = await put_many(tier, 10, 1000)
    # Another daemon read blob 0: its reads bump the file's atime (ours still says "oldest").
    path = tier.layout.blob_path(blobs[0][0])
    future = time.time_ns() + 30 * 10**9
    os.utime(path, ns=(future, path.stat().st_mtime_ns))
    await put_many(tier, 1, 1000, first_seed=100)
    await tier.settled()
    missing = await tier.find_missing([d for d, _ in blobs])
    assert missing == [blobs[1][0], blobs[2][0]]


async def test_eviction_spares_a_blob_another_process_reported_present(make_tier, monkeypatch):
    """A FindMissing answer "present" marks the file used, as a read does: another daemon sharing the root
    must not evict the blob between that answer and the client's use of it. The file's atime decides: the
    answering daemon's own LRU says "just used" (it loaded the index a moment ago) and must not stop the write."""
    from micd.tiers.disk import evict

    monkeypatch.setattr(evict, "ATIME_SLACK_NS", 0)  # no clock jitter to allow for: the atimes set are exact
    first = await make_tier(soft_cap=10_000, hard_cap=20_000)
    blobs = await put_many(first, 10, 1000)
    path = first.layout.blob_path(blobs[0][0])
    hour_ago = time.time_ns() - 3600 * 10**9  # nobody has read it for an hour
    os.utime(path, ns=(hour_ago, path.stat().st_mtime_ns))
    second = await make_tier(soft_cap=10_000, hard_cap=20_000)
    assert await second.find_missing([blobs[0][0]]) == []
    await put_many(first, 1, 1000, first_seed=100)
    await first.settled()
    assert await first.find_missing([d for d, _ in blobs]) == [blobs[1][0], blobs[2][0]]


async def test_present_blobs_are_marked_used_at_most_once_a_minute(make_tier, monkeypatch):
    """The atime rule of reads: a file used within the last minute is left alone, an older atime is rewritten
    (the mtime, part of `Sig`, never). A file this process marked is not even stat'ed again within the
    minute: a hot blob costs an `access` per check, not a stat or a metadata write."""
    tier = await make_tier(soft_cap=10_000, hard_cap=20_000)
    (recent_digest, _), (old_digest, _) = await put_many(tier, 2, 1000)
    recent_path, old_path = tier.layout.blob_path(recent_digest), tier.layout.blob_path(old_digest)
    mtime = old_path.stat().st_mtime_ns
    recent, old = time.time_ns() - 10 * 10**9, time.time_ns() - 3600 * 10**9
    os.utime(recent_path, ns=(recent, recent_path.stat().st_mtime_ns))
    os.utime(old_path, ns=(old, mtime))
    assert await tier.find_missing([recent_digest, old_digest]) == []
    assert recent_path.stat().st_atime_ns == recent
    assert old_path.stat().st_atime_ns > old and old_path.stat().st_mtime_ns == mtime
    stats: list[str] = []
    real_stat = disk_files.os.stat
    monkeypatch.setattr(disk_files.os, "stat", lambda path, **kw: stats.append(path) or real_stat(path, **kw))
    assert await tier.find_missing([recent_digest, old_digest]) == []
    assert stats == []


@pytest.mark.parametrize("size", [1000, 2 << 20], ids=["group-committed", "streamed"])
async def test_uploading_a_stored_blob_again_marks_it_used(make_tier, size):
    """A client that uploads a blob means to use it (an action result naming it comes next): like a
    FindMissing "present", the idempotent put marks the file used for other daemons' eviction."""
    tier = await make_tier(soft_cap=10 << 20, hard_cap=20 << 20)
    data = blob(size, seed=7)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    old = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(old, path.stat().st_mtime_ns))
    await tier.put_bytes(digest, data)
    assert path.stat().st_atime_ns > old


@pytest.mark.parametrize("how", ["utimensat", "os.utime"])
def test_set_atime_keeps_the_mtime_and_reports_an_absent_file(tmp_path, monkeypatch, how):
    if how == "os.utime":  # where the C library has no utimensat
        monkeypatch.setattr(libc, "utimensat", None)
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    before = path.stat()
    when = before.st_atime_ns + 5 * 10**9 + 123
    assert disk_files.set_atime(str(path), when)
    after = path.stat()
    assert (after.st_atime_ns, after.st_mtime_ns) == (when, before.st_mtime_ns)
    assert not disk_files.set_atime(str(tmp_path / "absent"), when)


async def test_records_are_evicted_like_blobs(make_tier):
    tier = await make_tier(soft_cap=5000, hard_cap=50_000)
    await tier.put_record("ns", "old", Record(b"x" * 1500))
    await put_many(tier, 4, 1000)
    await tier.settled()
    assert await tier.get_record("ns", "old") is None
    assert tier.evictions >= 1


async def test_a_blob_above_the_soft_cap_is_not_evicted_as_it_lands(make_tier):
    tier = await make_tier(soft_cap=1000, hard_cap=5000)
    old = await put_many(tier, 2, 400)
    big = blob(1500, seed=88)
    await tier.put_bytes(Digest.of(big), big)
    await tier.settled()
    assert await tier.get_bytes(Digest.of(big)) == big
    assert await tier.find_missing([d for d, _ in old]) == [d for d, _ in old]
    assert tier.used_bytes == 1500


async def test_writes_of_other_processes_count_after_a_rescan(make_tier, monkeypatch):
    from micd.tiers.disk import upkeep

    first = await make_tier(soft_cap=4000, hard_cap=4000)
    second = await make_tier(soft_cap=4000, hard_cap=4000)
    await put_many(first, 3, 1000)
    monkeypatch.setattr(upkeep, "_RESCAN_EVERY_NS", 0)  # as if a minute had passed
    data = blob(1500, seed=90)
    await second.put_bytes(Digest.of(data), data)
    # `second` saw first's 3000 bytes before reserving, so it evicted the oldest to stay under the cap.
    assert second.used_bytes <= 4000
    assert second.evictions >= 1


async def test_a_body_of_unknown_size_reserves_as_it_grows_up_to_the_hard_cap(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    fits = blob(6000, seed=60)  # far below the first reservation step: it gets just what each chunk needs
    assert await tier.put_stream("sha256", chunked(fits), None) == Digest.of(fits)
    assert await tier.get_bytes(Digest.of(fits)) == fits
    # Over the cap: found out only mid-body (older blobs may be evicted on the way, as for any write).
    too_big = blob(12_000, seed=61)
    with pytest.raises(StoreFull):
        await tier.put_stream("sha256", chunked(too_big), None)
    assert not await tier.contains(Digest.of(too_big))
    assert tier.stats()["reserved_bytes"] == 0
    assert temp_files(tier) == []


async def test_an_announced_size_over_the_hard_cap_is_refused_before_the_body_is_read(make_tier):
    tier = await make_tier(soft_cap=10_000, hard_cap=10_000)
    read = []

    async def body():
        read.append(True)
        yield b"x"

    with pytest.raises(StoreFull):
        await tier.put_stream("sha256", body(), 1 << 40)
    assert read == [] and tier.stats()["reserved_bytes"] == 0
