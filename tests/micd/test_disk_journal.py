"""Group commit of small blobs (`micd/tiers/disk/journal.py`): what a journal acknowledged survives a SIGKILL
followed by the loss of the published files' page cache (simulated by damaging them), torn and corrupt records
are never published, a dead writer's journal is replayed by a live daemon sharing the root, the journal stays
bounded under load, and a full filesystem fails the write before anything is acknowledged."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from micd.errors import StoreFull
from micd.store import Digest
from micd.tiers.disk import FilesystemFull
from micd.tiers.disk import files as disk_files
from micd.tiers.disk import journal as disk_journal
from micd.tiers.disk.layout import Layout
from tests.micd.helpers import blob

WRITER = """
import asyncio, random, sys
from pathlib import Path
from micd.store import Digest
from micd.tiers.disk import DiskTier

root, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pool = [random.Random(seed + i).randbytes(4096) for i in range(count)]

async def main():
    tier = DiskTier(Path(root), soft_cap=1 << 34, hard_cap=1 << 35)
    await tier.open()
    await asyncio.gather(*(tier.put_bytes(Digest.of(b), b) for b in pool))
    print(tier._temp_area().path, flush=True)  # acknowledged: every put returned
    await asyncio.sleep(3600)

asyncio.run(main())
"""

COUNT = 40
SEED = 7000


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 34, "hard_cap": 1 << 35, "verify_limit": 64 << 10}


def pool() -> list[bytes]:
    return [random.Random(SEED + i).randbytes(4096) for i in range(COUNT)]


async def killed_writer(root: Path) -> Path:
    """Run a writer process, SIGKILL it right after its puts were acknowledged; its temp area."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(root), str(COUNT), str(SEED), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == -signal.SIGKILL
    area = Path(line.decode().strip())
    assert (area / disk_journal.DIR).is_dir()
    return area


def lose_page_cache(root: Path, blobs: list[bytes]) -> None:
    """What a power cut may leave of files published without fsync: deleted, truncated, zeroed."""
    layout = Layout(root)
    for i, data in enumerate(blobs):
        path = layout.blob_path(Digest.of(data))
        if i % 3 == 0:
            path.unlink()
        elif i % 3 == 1:
            os.truncate(path, 100)
        else:
            path.write_bytes(bytes(len(data)))


def segment(area: Path) -> Path:
    [only] = list((area / disk_journal.DIR).iterdir())
    return only


def record_offsets(data: bytes) -> list[int]:
    """Start offset of each intact record in a segment, and the end of the last one."""
    offsets = [0]
    for _, body in disk_journal.read_segment(data)[0]:
        offsets.append(offsets[-1] + disk_journal._HEADER.size + len(body))
    return offsets


async def test_acknowledged_blobs_survive_sigkill_and_lost_page_cache(make_tier, tmp_path):
    root = tmp_path / "cache"
    area = await killed_writer(root)
    blobs = pool()
    lose_page_cache(root, blobs)
    tier = await make_tier(root)
    assert not area.exists()  # replayed, then removed
    assert await tier.find_missing([Digest.of(b) for b in blobs]) == []
    for data in blobs:
        assert await tier.get_bytes(Digest.of(data)) == data
    assert tier.corruptions == 0


async def test_torn_tail_and_corrupt_records_are_never_published(make_tier, tmp_path):
    root = tmp_path / "cache"
    area = await killed_writer(root)
    blobs = pool()
    path = segment(area)
    data = bytearray(path.read_bytes())
    offsets = record_offsets(bytes(data))
    assert len(offsets) == COUNT + 1
    # Record 5's bytes rot after it was written; a torn record (header + half its bytes) follows the last one.
    data[offsets[5] + disk_journal._HEADER.size + 10] ^= 0xFF
    extra = blob(4096, seed=1)
    torn = disk_journal._record(disk_journal._HEADER.unpack_from(data, 0)[2], Digest.of(extra), extra)
    data[offsets[-1] : offsets[-1] + len(torn) - 2048] = torn[:-2048]
    path.write_bytes(bytes(data))
    lose_page_cache(root, blobs)
    Layout(root).blob_path(Digest.of(blobs[5])).unlink(missing_ok=True)
    tier = await make_tier(root)
    missing = await tier.find_missing([Digest.of(b) for b in [*blobs, extra]])
    assert missing == [Digest.of(blobs[5]), Digest.of(extra)]
    for i, data in enumerate(blobs):
        if i != 5:
            assert await tier.get_bytes(Digest.of(data)) == data


def test_records_of_an_older_use_of_a_recycled_segment_are_not_replayed():
    new, old = blob(300, seed=2), blob(300, seed=3)
    data = disk_journal._record(9, Digest.of(new), new) + disk_journal._record(8, Digest.of(old), old)
    assert disk_journal.read_segment(data) == ([(Digest.of(new), new)], 0)


async def test_a_live_daemon_replays_a_dead_writers_journal(make_tier, tmp_path):
    root = tmp_path / "cache"
    live = await make_tier(root)
    area = await killed_writer(root)
    blobs = pool()
    lose_page_cache(root, blobs)
    await live.refresh()  # what a live daemon does at least once a minute before a write
    assert not area.exists()
    assert await live.find_missing([Digest.of(b) for b in blobs]) == []
    for data in blobs:
        assert await live.get_bytes(Digest.of(data)) == data
    assert live.entry_count == COUNT


async def test_the_journal_stays_bounded_under_sustained_load(make_tier):
    tier = await make_tier(journal_segment_bytes=64 << 10, journal_segments=2)
    journal_dir = tier._temp_area().path / disk_journal.DIR
    blobs = [blob(4096, seed=500 + i) for i in range(600)]
    for start in range(0, len(blobs), 50):
        wave = blobs[start : start + 50]
        await asyncio.gather(*(tier.put_bytes(Digest.of(b), b) for b in wave))
        segments = list(journal_dir.iterdir())
        assert len(segments) <= 2 and sum(p.stat().st_size for p in segments) <= 2 * (64 << 10)
    assert tier._journal.syncs >= 10  # segments were recycled, not grown
    for data in blobs[::37]:
        assert await tier.get_bytes(Digest.of(data)) == data


async def test_a_blob_larger_than_a_journal_record_is_streamed(make_tier):
    tier = await make_tier(journal_segment_bytes=64 << 10, journal_segments=2)
    data = blob(100 << 10, seed=8)
    await tier.put_bytes(Digest.of(data), data)
    assert await tier.get_bytes(Digest.of(data)) == data
    assert not (tier._temp_area().path / disk_journal.DIR).exists()  # no record was needed


@pytest.mark.parametrize("first_segment", [True, False])
async def test_enospc_in_the_journal_is_store_full_and_nothing_is_acknowledged(
    make_tier, monkeypatch, first_segment
):
    tier = await make_tier()
    if not first_segment:
        warm = blob(100, seed=9)
        await tier.put_bytes(Digest.of(warm), warm)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_journal.os, "pwrite", full)
    blobs = [blob(4096, seed=600 + i) for i in range(4)]
    results = await asyncio.gather(*(tier.put_bytes(Digest.of(b), b) for b in blobs), return_exceptions=True)
    assert all(isinstance(r, FilesystemFull) and isinstance(r, StoreFull) for r in results)
    monkeypatch.undo()
    digests = [Digest.of(b) for b in blobs]
    assert await tier.find_missing(digests) == digests
    assert tier.stats()["reserved_bytes"] == 0 and tier.used_bytes == (0 if first_segment else 100)
    await asyncio.gather(*(tier.put_bytes(Digest.of(b), b) for b in blobs))  # space is back
    for data in blobs:
        assert await tier.get_bytes(Digest.of(data)) == data


async def test_concurrent_puts_of_the_same_blob_in_two_daemons(make_tier, tmp_path):
    first, second = await make_tier(), await make_tier(tmp_path / "cache")
    data = blob(4096, seed=10)
    digest = Digest.of(data)
    await asyncio.gather(*(tier.put_bytes(digest, data) for tier in (first, second) for _ in range(10)))
    assert first.layout.blob_path(digest).read_bytes() == data
    assert first.used_bytes == 4096 and second.used_bytes == 4096
    assert await first.get_bytes(digest) == data and await second.get_bytes(digest) == data


async def test_clean_close_leaves_no_journal_and_blobs_durable(make_tier, tmp_path):
    tier = await make_tier()
    data = blob(4096, seed=11)
    await tier.put_bytes(Digest.of(data), data)
    area = tier._temp_area().path
    await tier.close()
    assert not area.exists()
    again = await make_tier(tmp_path / "cache")
    assert await again.get_bytes(Digest.of(data)) == data


async def test_a_big_batch_with_duplicates_and_one_failing_file_settles_each_put(make_tier, monkeypatch):
    tier = await make_tier()
    blobs = [blob(2000, seed=800 + i) for i in range(40)]
    doomed = tier.layout.blob_file(Digest.of(blobs[17]))
    real_publish = disk_files.publish_unsynced

    def publish(area, final, data):
        if final == doomed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_publish(area, final, data)

    monkeypatch.setattr(disk_files, "publish_unsynced", publish)
    puts = [tier.put_bytes(Digest.of(b), b) for b in blobs + blobs[::-1]]  # one batch, every blob twice
    results = await asyncio.gather(*puts, return_exceptions=True)
    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [17, 40 + 39 - 17]  # both copies of the doomed blob, and nothing else
    assert all(isinstance(results[i], OSError) and results[i].errno == errno.EIO for i in failed)
    monkeypatch.undo()
    assert await tier.find_missing([Digest.of(b) for b in blobs]) == [Digest.of(blobs[17])]
    for i, data in enumerate(blobs):
        if i != 17:
            assert await tier.get_bytes(Digest.of(data)) == data
    assert tier.stats()["reserved_bytes"] == 0


async def test_a_replay_that_fails_keeps_the_journal_and_the_daemon_opens(make_tier, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    area = await killed_writer(root)
    blobs = pool()
    lose_page_cache(root, blobs)
    real_publish = disk_journal.files.TempWriter.publish

    def full(self, final, *, sync=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk_journal.files.TempWriter, "publish", full)
    first = await make_tier(root)  # opens anyway
    assert (area / disk_journal.DIR).is_dir()  # nothing lost: the journal waits for a later attempt
    monkeypatch.setattr(disk_journal.files.TempWriter, "publish", real_publish)
    await first.refresh()
    assert not area.exists()
    for data in blobs:
        assert await first.get_bytes(Digest.of(data)) == data


def test_a_segment_is_not_recycled_before_the_files_it_covers_exist(tmp_path, monkeypatch):
    """A syncfs covers only files that exist when it runs: a full segment whose batch is still creating its
    files must wait, else a power cut after the recycle could lose blobs that were acknowledged."""
    import time

    syncs: list[float] = []
    monkeypatch.setattr(disk_journal, "syncfs", lambda root: syncs.append(time.monotonic()))
    journal = disk_journal.Journal(tmp_path, tmp_path, segment_bytes=4096, max_segments=2)
    first, second = blob(3000, seed=10), blob(3000, seed=11)
    try:
        errors, segment = journal.append([(Digest.of(first), first)])
        assert errors == [None] and segment is not None
        assert journal.append([(Digest.of(second), second)])[0] == [None]  # a new segment: the first is full
        time.sleep(0.3)
        assert syncs == []  # its batch has not published yet: no syncfs may retire it
        assert os.pread(segment.fd, 4, 0) == b"micJ"  # and its records are still there for a replay
        journal.published(segment)
        deadline = time.monotonic() + 5
        while not syncs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(syncs) == 1
    finally:
        journal.close()
