"""Disk tier on a root shared by several daemons: foreign writes are found, foreign deletes are misses,
a live writer's temp files survive another daemon's start, and a SIGKILLed writer leaves nothing visible."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from micd.store import Digest, Record
from micd.tiers.disk import files as disk_files
from tests.micd.helpers import blob

WRITER = """
import asyncio, random, sys
from pathlib import Path
from micd.store import Digest
from micd.tiers.disk import DiskTier

root, size, seed, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = random.Random(seed).randbytes(size)

async def chunks():
    for start in range(0, size, 1 << 20):
        yield data[start : start + (1 << 20)]
        if mode == "hang" and start >= size // 2:
            print("half", flush=True)
            await asyncio.sleep(3600)

async def main():
    tier = DiskTier(Path(root), soft_cap=1 << 34, hard_cap=1 << 35)
    await tier.open()
    await tier.put(Digest.of(data), chunks())
    await tier.close()
    print("done", flush=True)

asyncio.run(main())
"""

SIZE = 24 << 20
SEED = 4242


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 34, "hard_cap": 1 << 35, "verify_limit": 64 << 10}


def start_writer(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(SIZE), str(SEED), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def temp_files(root: Path) -> list[Path]:
    return [
        p
        for p in (root / "v1" / "tmp").rglob("*")
        if p.is_file() and p.name != "lock" and p.parent.name != "journal"
    ]


async def read_line(proc: subprocess.Popen, timeout: float = 60) -> str:
    return (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)).strip()


async def test_second_tier_sees_blobs_and_records_written_by_the_first(make_tier):
    first, second = await make_tier(), await make_tier()
    small, large = blob(1000, 1), blob(3 << 20, 2)
    await first.put_bytes(Digest.of(small), small)
    await first.put_bytes(Digest.of(large, "blake3"), large)
    await first.put_record("bazel-ac/x", "k", Record(b"r", (Digest.of(small),)))
    assert await second.find_missing([Digest.of(small), Digest.of(large, "blake3")]) == []
    assert await second.get_bytes(Digest.of(small)) == small
    assert await second.get_bytes(Digest.of(large, "blake3")) == large
    assert await second.get_record("bazel-ac/x", "k") == Record(b"r", (Digest.of(small),))
    assert second.entry_count == 3


async def test_blobs_deleted_by_another_tier_are_misses_not_errors(make_tier):
    first, second = await make_tier(), await make_tier()
    small, large = blob(1000, 3), blob(3 << 20, 4)
    ds, dl = Digest.of(small), Digest.of(large)
    await first.put_bytes(ds, small)
    await first.put_bytes(dl, large)
    await first.put_record("ns", "k", Record(b"r"))
    assert await second.find_missing([ds, dl]) == []  # `second` now indexes them
    await second.get_record("ns", "k")
    await first.evict(target=0)
    assert first.entry_count == 0
    assert await second.find_missing([ds, dl]) == [ds, dl]
    assert not await second.contains(ds)
    assert await second.get(ds) is None and await second.get(dl) is None
    assert await second.get_record("ns", "k") is None
    assert second.entry_count == 0 and second.used_bytes == 0
    assert second.corruptions == 0


async def test_resolve_finds_what_another_tier_published_and_misses_what_it_evicted(make_tier):
    first, second = await make_tier(), await make_tier()
    small, large = blob(1000, 5), blob(3 << 20, 6)
    ds, dl = Digest.of(small), Digest.of(large, "blake3")
    await first.put_bytes(ds, small)
    await first.put_bytes(dl, large)
    assert second.entry_count == 0  # `second` has never heard of them
    assert await second.resolve("sha256", ds.hex) == ds
    assert await second.resolve("blake3", dl.hex) == dl
    assert second.entry_count == 2  # indexed, as find_missing would
    await first.evict(target=0)
    assert await second.resolve("sha256", ds.hex) is None
    assert await second.resolve("blake3", dl.hex) is None


async def test_resolve_ignores_names_that_are_not_blobs_of_the_hash(make_tier):
    tier = await make_tier()
    data = blob(100, 7)
    digest = Digest.of(data)
    shard = tier.layout.blob_path(digest).parent
    (shard / f"{digest.hex}.0").write_bytes(b"")  # a size-0 name for a non-empty hash names nothing
    (shard / f"{digest.hex}.x").write_bytes(data)
    (shard / f"{digest.hex[:-1]}0.{len(data)}").write_bytes(data)  # another hash sharing the shard
    assert await tier.resolve("sha256", digest.hex) is None
    await tier.put_bytes(digest, data)
    assert await tier.resolve("sha256", digest.hex) == digest


async def test_refresh_counts_other_writers_and_forgets_their_evictions(make_tier):
    first, second = await make_tier(), await make_tier()
    blobs = [blob(500, 10 + i) for i in range(4)]
    for data in blobs:
        await first.put_bytes(Digest.of(data), data)
    await second.refresh()
    assert second.entry_count == 4 and second.used_bytes == 2000
    await first.evict(target=1000)
    await second.refresh()
    assert second.entry_count == 2 and second.used_bytes == 1000


@pytest.mark.parametrize("writer", ["reader", "other"])
async def test_eviction_elsewhere_does_not_break_an_open_read(make_tier, writer):
    first, second = await make_tier(), await make_tier()
    data = blob(5 << 20, 20)
    digest = Digest.of(data)
    await (first if writer == "reader" else second).put_bytes(digest, data)
    handle = await first.get(digest)
    chunks = handle.chunks()
    got = bytearray(await chunks.__anext__())
    await second.refresh()  # learn about what `first` wrote
    await second.evict(target=0)  # unlinks the file under the open reader
    assert not first.layout.blob_path(digest).exists()
    async for chunk in chunks:
        got += chunk
    assert bytes(got) == data


async def test_writer_in_another_process_is_found(make_tier, tmp_path):
    tier = await make_tier()
    proc = start_writer(tmp_path / "cache", "full")
    assert await read_line(proc) == "done"
    assert proc.wait(timeout=30) == 0
    data = blob(SIZE, SEED)
    assert await tier.contains(Digest.of(data))
    assert await tier.get_bytes(Digest.of(data)) == data


async def test_sigkill_mid_upload_leaves_no_partial_blob_and_temp_is_cleaned(make_tier, tmp_path):
    root = tmp_path / "cache"
    proc = start_writer(root, "hang")
    try:
        assert await read_line(proc) == "half"
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size > 0 for p in temp_files(root)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        partial = temp_files(root)
        assert partial and partial[0].stat().st_size >= 4 << 20
        live = await make_tier()  # another daemon starting now must not touch a live writer's temp file
        assert temp_files(root) == partial
        await live.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    data = blob(SIZE, SEED)
    digest = Digest.of(data)
    tier = await make_tier()
    assert temp_files(root) == []
    assert [p.name for p in (root / "v1" / "tmp").iterdir()] == [tier._temp_area().path.name]
    assert await tier.find_missing([digest]) == [digest]
    assert await tier.get(digest) is None
    assert tier.entry_count == 0 and tier.used_bytes == 0
    assert list((root / "v1" / "cas").rglob("*.*")) == []
    await tier.put_bytes(digest, data)  # the upload can simply be retried
    assert await tier.get_bytes(digest) == data


def assert_live_area(tmp_root: Path, area: disk_files.TempArea) -> None:
    """`area` is the only directory under `tmp_root`, its lock is held, and a cleaner leaves it alone."""
    assert [p.name for p in tmp_root.iterdir()] == [area.path.name]
    fd = os.open(area.path / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert disk_files.clean_dead_temp(tmp_root, lambda path: 0) == 0
    assert area.path.is_dir()


def clean_before_flock(monkeypatch, tmp_root: Path, age_ns: int = 0) -> list[int]:
    """Make the next `flock` of a new TempArea's lock first let another daemon's cleaner run (after making the
    staging directory `age_ns` old: an owner stalled that long). Returns what the cleaner removed, once run."""
    real_flock = fcntl.flock
    cleaned: list[int] = []
    running = []

    def flock_after_a_cleaner(fd, op):
        if not running:
            running.append(True)
            if age_ns:
                (staging,) = tmp_root.iterdir()
                old = time.time_ns() - age_ns
                os.utime(staging, ns=(old, old))
            cleaned.append(disk_files.clean_dead_temp(tmp_root, lambda path: 0))
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_cleaner)
    return cleaned


def test_a_cleaner_between_lock_creation_and_flock_leaves_the_new_area_alone(tmp_path, monkeypatch):
    """The lock file exists before its owner holds it: a cleaner must not judge the owner dead by it."""
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    cleaned = clean_before_flock(monkeypatch, tmp_root)
    area = disk_files.TempArea(tmp_root)
    monkeypatch.undo()
    assert cleaned == [0]
    assert_live_area(tmp_root, area)
    area.release()


def test_an_owner_stalled_past_the_stray_age_starts_over_under_a_new_name(tmp_path, monkeypatch):
    """A cleaner takes an old staging directory by renaming it away, so the owner's own rename fails and it
    retries: it never runs with a directory a cleaner removed."""
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    cleaned = clean_before_flock(monkeypatch, tmp_root, age_ns=2 * disk_files._STRAY_AGE_NS)
    area = disk_files.TempArea(tmp_root)
    monkeypatch.undo()
    assert cleaned == [1]
    assert_live_area(tmp_root, area)
    area.release()


def test_staging_directories_left_by_a_crash_are_removed_once_old(tmp_path):
    tmp_root = tmp_path / "tmp"
    young, old = tmp_root / ".new-1-young", tmp_root / ".new-2-old"
    for path in (young, old):
        path.mkdir(parents=True)
        (path / "lock").touch()  # created, never flocked: exactly what a live owner's looks like at first
    stamp = time.time_ns() - 2 * disk_files._STRAY_AGE_NS
    os.utime(old, ns=(stamp, stamp))
    assert disk_files.clean_dead_temp(tmp_root, lambda path: 0) == 1
    assert [p.name for p in tmp_root.iterdir()] == [young.name]


def republish_at_the_last_moment(monkeypatch, path: Path, data: bytes) -> dict[str, int]:
    """Another daemon evicts `path` and publishes the same blob there again (a new inode, acknowledged to its
    client) just after this process last looked at it before removing it: after a `stat` of it returns, or just
    before it is renamed. Returns {"ino": the new inode} once that happened."""
    real_stat, real_rename = os.stat, os.rename
    done: dict[str, int] = {}

    def republish() -> None:
        if done:
            return
        done["ino"] = 0
        os.unlink(path)
        other = path.with_name("other-daemon.tmp")
        other.write_bytes(data)
        real_rename(other, path)
        done["ino"] = real_stat(path).st_ino

    def stat(p, *args, **kw):
        st = real_stat(p, *args, **kw)
        if str(p) == str(path):
            republish()
        return st

    def rename(src, dst, *args, **kw):
        if str(src) == str(path):
            republish()
        return real_rename(src, dst, *args, **kw)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "rename", rename)
    return done


async def test_eviction_keeps_a_blob_another_daemon_published_again_after_the_check(make_tier, monkeypatch):
    tier = await make_tier(soft_cap=10_000, hard_cap=20_000)
    blobs = [blob(1000, seed=500 + i) for i in range(10)]
    for data in blobs:
        await tier.put_bytes(Digest.of(data), data)
    victim = tier.layout.blob_path(Digest.of(blobs[0]))
    republished = republish_at_the_last_moment(monkeypatch, victim, blobs[0])
    extra = blob(1000, seed=600)
    await tier.put_bytes(Digest.of(extra), extra)  # over the soft cap: evicts blobs[0] (oldest) first
    await tier.settled()
    monkeypatch.undo()
    assert republished["ino"]
    assert victim.stat().st_ino == republished["ino"], "the other daemon's acknowledged blob was deleted"
    assert await tier.get_bytes(Digest.of(blobs[0])) == blobs[0]
    assert tier.used_bytes <= 10_000  # others were evicted instead
    assert temp_files(tier.layout.root) == []


async def test_a_corrupt_blob_replaced_by_another_daemon_is_not_deleted(make_tier, monkeypatch):
    tier = await make_tier()
    data = blob(1000, seed=700)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    path.write_bytes(bytes(len(data)))  # damaged in place (same inode) ...
    stamp = time.time_ns() - 3600 * 10**9
    os.utime(
        path, ns=(stamp, stamp)
    )  # ... long ago: the other daemon's copy is newer even if it gets this inode
    republished = republish_at_the_last_moment(monkeypatch, path, data)
    assert await tier.get_bytes(digest) is None  # this read found it corrupt: a miss
    monkeypatch.undo()
    assert republished["ino"] and tier.corruptions == 1
    assert path.stat().st_ino == republished["ino"]
    assert await tier.get_bytes(digest) == data
    assert temp_files(tier.layout.root) == []


CRASHING_EVICTOR = """
import asyncio, os, random, signal, sys
from pathlib import Path
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.disk import files

root, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(seed).randbytes(size)  # streamed, not journaled: a journal replay would restore it
real_stat = os.stat

def stat(path, *args, **kw):
    if "/taken." in str(path):  # the victim was just taken into the temp area: die right there
        os.kill(os.getpid(), signal.SIGKILL)
    return real_stat(path, *args, **kw)

async def main():
    tier = DiskTier(Path(root), soft_cap=1 << 34, hard_cap=1 << 35)
    await tier.open()
    await tier.put_bytes(Digest.of(data), data)
    files.os.stat = stat
    await tier.evict(0)

asyncio.run(main())
"""


async def test_an_evictor_killed_after_taking_a_victim_leaves_a_miss_and_nothing_behind(make_tier, tmp_path):
    root = tmp_path / "cache"
    data = blob(2 << 20, seed=800)
    digest = Digest.of(data)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_EVICTOR, str(root), str(len(data)), "800"
    )
    assert await asyncio.wait_for(proc.wait(), 60) == -signal.SIGKILL
    assert [p.name.partition(".")[0] for p in temp_files(root)] == ["taken"]  # in the dead writer's area
    tier = await make_tier(root)
    assert temp_files(root) == []
    assert [p.name for p in (root / "v1" / "tmp").iterdir()] == [tier._temp_area().path.name]
    assert await tier.find_missing([digest]) == [digest]
    assert await tier.get(digest) is None and tier.corruptions == 0
    await tier.put_bytes(digest, data)
    assert await tier.get_bytes(digest) == data


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_file_that_cannot_be_linked_back_is_renamed_back(tmp_path, monkeypatch, code):
    """The file at the name was not the judged one (another daemon published the blob again): when linking
    it back fails (no space for the new link, an I/O error), it is renamed back, never deleted."""
    area = tmp_path / "tmp" / "area"
    area.mkdir(parents=True)
    blob_path = tmp_path / "cas" / "ab" / "blob"
    blob_path.parent.mkdir(parents=True)
    blob_path.write_bytes(b"judged copy")
    judged = disk_files.Sig.of(os.stat(blob_path))
    blob_path.unlink()
    blob_path.write_bytes(b"newer copy")  # another daemon's, just acknowledged

    def failing_link(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(disk_files.os, "link", failing_link)
    same, _ = disk_files.unlink_if_same(blob_path, area, judged)
    assert not same
    assert blob_path.read_bytes() == b"newer copy"
    assert list(area.iterdir()) == []
