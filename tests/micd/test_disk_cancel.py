"""Disk tier requests cancelled while a worker thread creates their fd or temp file (a client disconnecting,
Bazel cancelling a download) leak neither: the thread still finishes, and what it created is then released.

Deterministic: the creating call is held on an event until the request's task is cancelled.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from micd.store import Digest, Record
from micd.tiers.disk import DiskTier
from micd.tiers.disk import files as disk_files
from tests.micd.helpers import blob, chunked, temp_files


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 34, "hard_cap": 1 << 35, "verify_limit": 64 << 10}


def fds_to(path: Path) -> list[int]:
    """This process's fds open on `path` (a deleted file's link reads "<path> (deleted)")."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the fd listdir itself used, already closed
            continue
        if target.removesuffix(" (deleted)") == str(path):
            out.append(int(name))
    return out


async def cancel_while_held(start: Callable[[], Awaitable[object]], entered: threading.Event,
                            proceed: threading.Event) -> None:  # fmt: skip
    """Start a request, cancel it while its creating call is held in the thread, then let that call go on.

    The call is let go before the cancelled task is awaited: its clean-up may wait for that call (an abort
    waits for a publish holding the temp file's lock), as it would in production."""
    task = asyncio.ensure_future(start())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()  # the task's awaited future is cancelled now: it sees CancelledError whatever the thread does
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def until(condition: Callable[[], bool]) -> bool:
    """Wait (bounded: 30 s, for a loaded machine) for the thread to finish and the release to run on the loop."""
    for _ in range(3000):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def test_a_cancelled_large_get_closes_the_fd_its_thread_opened(make_tier, monkeypatch):
    tier: DiskTier = await make_tier()
    data = blob(1 << 20, seed=1)  # above verify_limit: opened for streaming (an fd handed to FileBlob)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    entered, proceed, opened = threading.Event(), threading.Event(), []
    real_open_large = disk_files.open_large

    def held_open_large(where):
        entered.set()
        proceed.wait(10)
        result = real_open_large(where)
        opened.append(result)
        return result

    monkeypatch.setattr(disk_files, "open_large", held_open_large)
    await cancel_while_held(lambda: tier.get(digest), entered, proceed)
    assert await until(lambda: bool(opened) and not fds_to(path)), fds_to(path)
    assert opened[0] is not None


@pytest.mark.parametrize("kind", ["streamed blob", "record"])
async def test_a_cancelled_put_removes_the_temp_file_its_thread_created(make_tier, monkeypatch, kind):
    tier: DiskTier = await make_tier()
    entered, proceed, writers = threading.Event(), threading.Event(), []
    real_writer = disk_files.TempWriter

    class HeldWriter(real_writer):
        def __init__(self, directory: Path) -> None:
            entered.set()
            proceed.wait(10)
            super().__init__(directory)
            writers.append(self)

    monkeypatch.setattr(disk_files, "TempWriter", HeldWriter)
    if kind == "record":
        start = lambda: tier.put_record("ns", "key", Record(b"v" * 100))
    else:
        data = blob(2 << 20, seed=2)  # above the fast path's limit: streamed to a temp file
        start = lambda: tier.put(Digest.of(data), chunked(data, 1 << 16))
    await cancel_while_held(start, entered, proceed)

    def released() -> bool:
        return bool(writers) and not writers[0].path.exists() and not fds_to(writers[0].path)

    assert await until(released)
    assert temp_files(tier) == []
    assert tier.stats()["reserved_bytes"] == 0


@pytest.mark.parametrize("kind", ["streamed blob", "small blob", "record"])
async def test_a_write_cancelled_while_publishing_is_still_counted(make_tier, monkeypatch, kind):
    """The thread (or group commit) publishes anyway: usage and LRU must count it now, not at the next
    rescan (up to a minute later, while the caps would be enforced on a wrong total)."""
    tier: DiskTier = await make_tier()
    entered, proceed = threading.Event(), threading.Event()

    def held(publish):
        def publish_when_let(*args, **kwargs):
            entered.set()
            proceed.wait(10)
            return publish(*args, **kwargs)

        return publish_when_let

    if kind == "small blob":  # group-committed: published by the commit's thread
        monkeypatch.setattr(disk_files, "publish_unsynced", held(disk_files.publish_unsynced))
    else:  # held inside TempWriter.publish, under its lock (an abort queued meanwhile waits for it)
        monkeypatch.setattr(disk_files.Sig, "of", staticmethod(held(disk_files.Sig.of)))
    before = tier.used_bytes
    if kind == "record":
        start = lambda: tier.put_record("ns", "key", Record(b"v" * 100))
    else:
        data = blob(2 << 20 if kind == "streamed blob" else 1000, seed=3)
        start = lambda: tier.put_bytes(Digest.of(data), data)
    await cancel_while_held(start, entered, proceed)
    assert await until(lambda: tier.used_bytes > before)
    if kind == "record":
        assert (await tier.get_record("ns", "key")).value == b"v" * 100
    else:
        assert tier.used_bytes == before + len(data) and await tier.get_bytes(Digest.of(data)) == data
    assert tier.stats()["entries"] == 1 and tier.stats()["reserved_bytes"] == 0


@pytest.mark.parametrize("kind", ["streamed blob", "record"])
async def test_a_write_cancelled_while_cleaning_up_after_its_publish_is_still_counted(
    make_tier, monkeypatch, kind
):
    """One await later than the publish: the writer's abort (a no-op once published) still runs in a thread,
    and a cancel there must not lose the count of what was published."""
    tier: DiskTier = await make_tier()
    entered, proceed = threading.Event(), threading.Event()
    real_abort = disk_files.TempWriter.abort

    def held_abort(writer) -> None:
        if writer._moved:  # the abort that follows a successful publish
            entered.set()
            proceed.wait(10)
        real_abort(writer)

    monkeypatch.setattr(disk_files.TempWriter, "abort", held_abort)
    if kind == "record":
        size = None
        start = lambda: tier.put_record("ns", "key", Record(b"v" * 100))
    else:
        data = blob(2 << 20, seed=4)
        size = len(data)
        start = lambda: tier.put_bytes(Digest.of(data), data)
    await cancel_while_held(start, entered, proceed)
    assert tier.stats()["entries"] == 1 and tier.used_bytes > 0
    if size is not None:
        assert tier.used_bytes == size
