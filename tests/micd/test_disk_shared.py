"""Disk tier on a root shared by several daemons: foreign writes are found, foreign deletes are misses,
a live writer's temp files survive another daemon's start, and a SIGKILLed writer leaves nothing visible."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from micd.store import Digest, Record
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
        p for p in (root / "v1" / "tmp").rglob("*") if p.is_file() and p.name != "lock" and p.parent.name != "journal"
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


@pytest.mark.parametrize("trusted", [True, False])
async def test_eviction_elsewhere_does_not_break_an_open_read(make_tier, trusted):
    first, second = await make_tier(), await make_tier()
    data = blob(5 << 20, 20)
    digest = Digest.of(data)
    await (first if trusted else second).put_bytes(digest, data)
    handle = await first.get(digest)
    assert (handle.path is not None) is trusted
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
