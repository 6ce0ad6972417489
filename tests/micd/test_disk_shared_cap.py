"""The hard cap is a cap on disk use, across every daemon sharing the cache root (a user's sessions share one
by default): published files, journal segments and in-flight writes of all of them together stay under it,
and a daemon killed with SIGKILL does not keep its reservations once its temp area is cleaned."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from micd.errors import StoreFull
from micd.store import Digest
from tests.micd.helpers import blob, start_held_put, wait_until

CAP = 8 << 20


def disk_use(root: Path) -> int:
    """Bytes of every file the caps cover: blobs and records, temp files and journal segments."""
    return sum(
        p.stat().st_size
        for part in ("cas", "kv", "tmp")
        for p in (root / "v1" / part).rglob("*")
        if p.is_file()
    )


@pytest.mark.parametrize("daemons", [1, 2])
async def test_disk_use_stays_under_the_hard_cap(make_tier, tmp_path, daemons):
    """Small blobs (group commit: journal segments) and streamed ones, from one daemon or two at once."""
    tiers = [await make_tier(soft_cap=CAP, hard_cap=CAP) for _ in range(daemons)]
    peak = 0
    for i in range(60):
        data = blob((100 << 10) if i % 3 else (700 << 10), seed=i)
        await tiers[i % daemons].put_bytes(Digest.of(data), data)
        peak = max(peak, disk_use(tmp_path / "cache"))
    assert peak <= CAP


async def test_another_daemons_in_flight_write_counts_against_the_cap(make_tier):
    first, second = await make_tier(soft_cap=CAP, hard_cap=CAP), await make_tier(soft_cap=CAP, hard_cap=CAP)
    release = asyncio.Event()
    held = await start_held_put(first, blob(6 << 20, seed=1), release)
    other = blob(3 << 20, seed=2)
    with pytest.raises(StoreFull) as info:  # 6 MiB reserved by `first` + 3 MiB > 8 MiB, nothing to evict
        await second.put_bytes(Digest.of(other), other)
    assert info.value.reserved >= 6 << 20 and info.value.needed == 3 << 20
    release.set()
    await held


HOLDER = """
import asyncio, sys
from pathlib import Path
from micd.store import Digest
from micd.tiers.disk import DiskTier

async def main():
    tier = DiskTier(Path(sys.argv[1]), soft_cap=int(sys.argv[2]), hard_cap=int(sys.argv[2]))
    await tier.open()
    data = bytes(6 << 20)

    async def chunks():
        yield data[:1000]
        print("holding", flush=True)
        await asyncio.sleep(3600)

    await tier.put(Digest.of(data), chunks())

asyncio.run(main())
"""


def start_holder(root: Path) -> subprocess.Popen:
    """A daemon in another process that reserves 6 MiB of the cap and holds it until killed."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(CAP)], stdout=subprocess.PIPE, text=True)


async def test_a_killed_daemons_reservation_is_released_once_its_temp_area_is_cleaned(make_tier, tmp_path):
    root = tmp_path / "cache"
    proc = start_holder(root)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == "holding"
        tier = await make_tier(soft_cap=CAP, hard_cap=CAP)
        data = blob(3 << 20, seed=3)
        with pytest.raises(StoreFull):  # the other daemon holds 6 MiB of the 8
            await tier.put_bytes(Digest.of(data), data)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    await tier.put_bytes(Digest.of(data), data)  # its area is cleaned and its reservation dropped
    assert await tier.get_bytes(Digest.of(data)) == data


async def test_a_cancelled_upload_gives_its_room_back_to_the_other_daemons(make_tier):
    """Released, not kept as idle headroom in this daemon's claim, where no other daemon could use it."""
    first, second = await make_tier(soft_cap=CAP, hard_cap=CAP), await make_tier(soft_cap=CAP, hard_cap=CAP)
    data = blob(5 << 20, seed=4)
    arrived = asyncio.Event()

    async def client():
        yield data[: 1 << 20]
        arrived.set()
        await asyncio.Event().wait()

    upload = asyncio.create_task(first.put(Digest.of(data), client()))
    await arrived.wait()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert first.stats()["reserved_bytes"] == 0
    await wait_until(lambda: first.stats()["root_claimed_bytes"] < 1 << 20)
    other = blob(6 << 20, seed=5)  # fits only if the cancelled upload's 5 MiB came back
    await second.put_bytes(Digest.of(other), other)
