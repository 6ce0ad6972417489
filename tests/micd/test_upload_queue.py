"""Upload queue: journaled, bounded, retried with capped backoff, drained on shutdown, replayed on restart;
several daemons sharing one journal; journal I/O errors."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import threading

import pytest

from micd import upload_queue
from micd.errors import TierUnavailable
from micd.upload_queue import MAGIC, UploadQueue, decode_entry, encode_entry
from mickernel.errors import FormatError
from tests.micd.helpers import wait_until


class Recorder:
    """A programmable handler: records keys, fails `fail_times` times per key, can be paused."""

    def __init__(self, fail_times: int = 0, error: type[Exception] = TierUnavailable) -> None:
        self.done: list[str] = []
        self.calls: dict[str, int] = {}
        self.fail_times = fail_times
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> None:
        self.calls[key] = self.calls.get(key, 0) + 1
        await self.gate.wait()
        if self.calls[key] <= self.fail_times:
            raise self.error(f"simulated failure {self.calls[key]}")
        self.done.append(key)


def journal_files(path) -> list[str]:
    """Names of the pending entries: plain, or taken by a worker uploading it (`<name>.inflight`)."""
    return sorted(
        name.partition(".")[0] for name in os.listdir(path) if "." not in name or name.endswith(".inflight")
    )


async def test_submit_runs_handler_and_removes_journal(tmp_path):
    depths: list[int] = []
    queue = UploadQueue(tmp_path / "q", workers=2, on_depth=depths.append)
    handler = Recorder()
    await queue.start(handler)
    for i in range(5):
        await queue.submit(f"cas/k{i}")
    assert await queue.drain(5)
    assert sorted(handler.done) == [f"cas/k{i}" for i in range(5)]
    assert journal_files(tmp_path / "q") == []
    assert queue.depth == 0 and depths[-1] == 0 and max(depths) >= 1
    await queue.close()


async def test_journal_written_before_submit_returns(tmp_path):
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    await queue.submit("kv/ns/key")
    (name,) = journal_files(tmp_path / "q")
    assert decode_entry((tmp_path / "q" / name).read_bytes()) == "kv/ns/key"
    handler.gate.set()
    assert await queue.drain(5)
    await queue.close()


async def test_transient_failures_retry_with_capped_backoff(tmp_path, monkeypatch):
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args):
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("micd.upload_queue.asyncio.sleep", fake_sleep)
    queue = UploadQueue(tmp_path / "q", workers=1, base_delay=0.1, max_delay=0.4)
    handler = Recorder(fail_times=6)
    await queue.start(handler)
    await queue.submit("cas/a")
    assert await queue.drain(5)
    assert handler.done == ["cas/a"] and handler.calls["cas/a"] == 7
    assert len(sleeps) == 6
    caps = [min(0.1 * 2**i, 0.4) for i in range(6)]
    assert all(cap * 0.5 <= got <= cap for got, cap in zip(sleeps, caps, strict=True))
    assert max(sleeps) <= 0.4
    await queue.close()


async def test_permanent_failure_is_dropped_not_retried(tmp_path, caplog):
    queue = UploadQueue(tmp_path / "q", workers=1, base_delay=0.01, max_delay=0.01)
    handler = Recorder(fail_times=99, error=FileNotFoundError)
    await queue.start(handler)
    await queue.submit("cas/gone")
    await queue.submit("cas/other")
    assert await queue.drain(5)
    assert handler.calls["cas/gone"] == 1 and queue.dropped == 2
    assert "cannot succeed" in caplog.text
    assert journal_files(tmp_path / "q") == []
    await queue.close()


async def test_pending_items_survive_restart(tmp_path):
    journal = tmp_path / "q"
    first = UploadQueue(journal, workers=2, base_delay=0.01, max_delay=0.02)
    down = Recorder(fail_times=10**9)
    await first.start(down)
    for i in range(7):
        await first.submit(f"cas/{i}")
    assert not await first.drain(0.1)
    await first.close()
    assert len(journal_files(journal)) == 7 and down.done == []

    second = UploadQueue(journal, workers=2)
    assert second.depth == 0
    up = Recorder()
    await second.start(up)
    assert await second.drain(5)
    assert sorted(up.done) == sorted(f"cas/{i}" for i in range(7))
    assert journal_files(journal) == []
    await second.close()


async def test_full_queue_never_blocks_submit_and_loses_nothing(tmp_path):
    queue = UploadQueue(tmp_path / "q", workers=1, maxsize=2)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    async with asyncio.timeout(5):  # would hang if submit waited for room
        for i in range(20):
            await queue.submit(f"cas/{i}")
    assert queue.depth == 20
    assert len(journal_files(tmp_path / "q")) == 20
    handler.gate.set()
    assert await queue.drain(10)
    assert sorted(handler.done) == sorted(f"cas/{i}" for i in range(20))
    assert len(handler.done) == 20
    await queue.close()


async def test_duplicate_submit_is_one_item(tmp_path):
    """Two submits of a key still queued are one upload. (One submitted again while in flight runs again:
    test_resubmit_while_in_flight_runs_again.) The worker is kept busy so the key stays queued."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    await queue.submit("cas/busy")
    await wait_until(lambda: "cas/busy" in handler.calls)
    await queue.submit("cas/same")
    await queue.submit("cas/same")
    assert queue.depth == 2
    handler.gate.set()
    assert await queue.drain(5)
    assert handler.done == ["cas/busy", "cas/same"]
    await queue.close()


async def test_resubmit_while_in_flight_runs_again(tmp_path):
    """A KV record replaced during its upload must be uploaded again, or S3 keeps the old value."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    await queue.submit("kv/ns/k")
    await wait_until(lambda: "kv/ns/k" in handler.calls)
    await queue.submit("kv/ns/k")
    handler.gate.set()
    assert await queue.drain(5)
    assert handler.done == ["kv/ns/k", "kv/ns/k"]
    assert journal_files(tmp_path / "q") == []
    await queue.close()


async def test_drain_times_out_when_remote_is_down(tmp_path):
    queue = UploadQueue(tmp_path / "q", workers=1, base_delay=0.01, max_delay=0.05)
    await queue.start(Recorder(fail_times=10**9))
    await queue.submit("cas/x")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await queue.drain(0.3) is False
    assert 0.25 <= loop.time() - started < 10
    assert queue.depth == 1
    await queue.close()
    assert len(journal_files(tmp_path / "q")) == 1


async def test_corrupt_journal_entry_is_set_aside(tmp_path, caplog):
    journal = tmp_path / "q"
    journal.mkdir()
    (journal / ("0" * 40)).write_bytes(b"garbage")
    (journal / ("1" * 40)).write_bytes(encode_entry("cas/good"))
    (journal / ("2" * 40 + ".1.ab.tmp")).write_bytes(b"half written by a crashed daemon")
    os.utime(journal / ("2" * 40 + ".1.ab.tmp"), (0, 0))
    (journal / ("3" * 40 + ".2.cd.tmp")).write_bytes(b"being written by a live daemon")
    queue = UploadQueue(journal, workers=1)
    handler = Recorder()
    await queue.start(handler)
    assert await queue.drain(5)
    assert handler.done == ["cas/good"]
    assert sorted(os.listdir(journal)) == ["0" * 40 + ".bad", "3" * 40 + ".2.cd.tmp"]
    assert "unreadable" in caplog.text
    await queue.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"MIC", "truncated header"),
        (b"XXXX\x01\x00\x01a", "bad magic"),
        (MAGIC + b"\x09\x00\x01a", "unsupported version"),
        (MAGIC + b"\x01\x00\x05a", "bad length"),
        (MAGIC + b"\x01\x00\x01\xff", "not UTF-8"),
    ],
)
def test_decode_entry_rejects_malformed(data, message):
    with pytest.raises(FormatError, match=message):
        decode_entry(data)


def test_entry_round_trip_and_bad_keys():
    assert decode_entry(encode_entry("kv/bazel-ac/main/k:1")) == "kv/bazel-ac/main/k:1"
    with pytest.raises(ValueError):
        encode_entry("")
    with pytest.raises(ValueError):
        UploadQueue("unused", workers=0)


async def test_two_queues_sharing_a_journal_lose_nothing(tmp_path):
    """Two daemons on one disk root: every item is handled at least once, and the journal ends empty."""
    journal = tmp_path / "q"
    first, second = UploadQueue(journal, workers=2), UploadQueue(journal, workers=2)
    one, two = Recorder(), Recorder()
    one.gate.clear()
    await first.start(one)
    for i in range(10):
        await first.submit(f"cas/{i}")
    await first.close()  # a daemon that died with work pending
    await second.start(two)
    await second.submit("cas/new")
    assert await second.drain(5)
    assert sorted(two.done) == sorted([f"cas/{i}" for i in range(10)] + ["cas/new"])
    assert journal_files(journal) == []
    await second.close()


def entry_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


# -- several daemons on one journal: a newer upload of a key is never overtaken or forgotten -------------
async def test_kv_update_during_another_daemons_upload_lands_last(tmp_path):
    """Daemon A uploads v1 of a record; meanwhile daemon B stores v2 and submits the same key. B's upload
    must run after A's (not be skipped because A's entry existed, nor race it): S3 ends with v2."""
    journal = tmp_path / "q"
    local = {"kv/ns/k": "v1"}  # the shared disk
    remote: dict[str, str] = {}
    a_read, a_go = asyncio.Event(), asyncio.Event()

    async def handler_a(key):
        value = local[key]  # A reads the local record ...
        a_read.set()
        await a_go.wait()  # ... and PUTs it (slow network)
        remote[key] = value

    async def handler_b(key):
        remote[key] = local[key]

    a = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    b = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    await a.start(handler_a)
    await b.start(handler_b)
    await a.submit("kv/ns/k")
    await a_read.wait()
    local["kv/ns/k"] = "v2"  # B's put_record ...
    await b.submit("kv/ns/k")  # ... and its upload, acknowledged to the client
    a_go.set()
    assert await a.drain(5) and await b.drain(5)
    assert remote["kv/ns/k"] == "v2"
    assert os.listdir(journal) == []
    await a.close()
    await b.close()


async def test_submit_during_another_daemons_upload_stays_journaled(tmp_path):
    """A's finished upload must not remove the entry of B's later submit: if B then stops before uploading,
    the next daemon still finds it and uploads the newer value."""
    journal = tmp_path / "q"
    local = {"kv/ns/k": "v1"}
    remote: dict[str, str] = {}
    a_read, a_go, never = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler_a(key):
        value = local[key]
        a_read.set()
        await a_go.wait()
        remote[key] = value

    async def stuck(key):
        await never.wait()  # B stops before its upload completes

    async def handler_c(key):
        remote[key] = local[key]

    a = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    b = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    await a.start(handler_a)
    await b.start(stuck)
    await a.submit("kv/ns/k")
    await a_read.wait()
    local["kv/ns/k"] = "v2"
    await b.submit("kv/ns/k")
    a_go.set()
    assert await a.drain(5)
    await a.close()
    await b.close()
    assert journal_files(journal) == [entry_name("kv/ns/k")]

    c = UploadQueue(journal, workers=1)
    await c.start(handler_c)
    assert await c.drain(5)
    assert remote["kv/ns/k"] == "v2"
    assert os.listdir(journal) == []
    await c.close()


async def test_start_recovers_dead_workers_entries_not_live_ones(tmp_path):
    """`<name>.inflight` whose lock is free (its daemon died mid-upload) is replayed; one whose lock a live
    daemon holds is left to it."""
    journal = tmp_path / "q"
    journal.mkdir()
    dead, live = entry_name("cas/dead"), entry_name("cas/live")
    (journal / f"{dead}.inflight").write_bytes(encode_entry("cas/dead"))
    (journal / f"{dead}.lock").write_bytes(b"")  # its holder died: the kernel dropped the flock
    (journal / f"{live}.inflight").write_bytes(encode_entry("cas/live"))
    holder = os.open(journal / f"{live}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        queue = UploadQueue(journal, workers=1)
        handler = Recorder()
        await queue.start(handler)
        assert await queue.drain(5)
        await queue.close()
        assert handler.done == ["cas/dead"]
        assert sorted(os.listdir(journal)) == sorted([f"{live}.inflight", f"{live}.lock"])
    finally:
        os.close(holder)


# -- journal I/O errors never kill a worker -----------------------------------------------------------
async def test_journal_unlink_error_keeps_the_worker(tmp_path, monkeypatch, caplog):
    """An EIO while removing a finished item's journal file is logged; the (only) worker carries on."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    await queue.start(handler)
    real_unlink = os.unlink
    failed: list[str] = []

    def flaky_unlink(path, *args, **kw):
        if not failed:
            failed.append(str(path))
            raise OSError(errno.EIO, "simulated I/O error")
        return real_unlink(path, *args, **kw)

    monkeypatch.setattr(upload_queue.os, "unlink", flaky_unlink)
    for key in ("cas/a", "cas/b", "cas/c"):
        await queue.submit(key)
    assert await queue.drain(5)
    assert handler.done == ["cas/a", "cas/b", "cas/c"] and failed
    assert "simulated I/O error" in caplog.text
    assert all(not task.done() for task in queue._tasks)
    await queue.close()


@pytest.mark.parametrize("phase", ["uploading", "finishing"])
async def test_failed_resubmit_in_flight_is_still_uploaded(tmp_path, phase):
    """A resubmit whose journal write fails (ENOSPC) while the item is in flight, during its upload or while
    the worker removes the taken entry: the caller hears of it, the worker still uploads the item once more
    (journaling it after all if it can), and lives on."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    calls: list[str] = []
    failures: list[BaseException | None] = []

    async def resubmit_and_wait(key):
        task = asyncio.ensure_future(queue.submit(key))
        await asyncio.wait([task])  # the write has failed before the worker goes on
        failures.append(task.exception())

    async def handler(key):
        calls.append(key)
        if phase == "uploading" and len(calls) == 1:
            await resubmit_and_wait(key)

    real_step = queue._journal_step

    async def journal_step(what, func, *args):
        if phase == "finishing" and what.startswith("remove") and not failures:
            await resubmit_and_wait("kv/ns/k")
        return await real_step(what, func, *args)

    real_write = queue._write_entry
    writes: list[str] = []

    def write_entry(name, data):
        writes.append(name)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "simulated full disk")
        return real_write(name, data)

    queue._write_entry = write_entry
    queue._journal_step = journal_step
    await queue.start(handler)
    await queue.submit("kv/ns/k")
    assert await queue.drain(5)
    (failed,) = failures
    assert isinstance(failed, OSError) and failed.errno == errno.ENOSPC
    assert calls == ["kv/ns/k", "kv/ns/k"]
    # Uploading: the same locked run uploads again. Finishing: the worker journals it after all, then uploads.
    assert len(writes) == {"uploading": 2, "finishing": 3}[phase]
    assert os.listdir(queue.journal_dir) == []
    await queue.submit("cas/next")
    assert await queue.drain(5)
    assert calls[-1] == "cas/next"
    await queue.close()


async def test_unexpected_error_keeps_the_worker_and_the_entry(tmp_path, monkeypatch, caplog):
    """Any exception out of one item is logged; its key is no longer pending here (drain() can go idle),
    its journal entry stays for the next start, and the worker handles the next items."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    real_handle = queue._handle

    async def handle(key):
        if key == "cas/bug":
            raise RuntimeError("simulated bug")
        await real_handle(key)

    queue._handle = handle
    await queue.start(handler)
    for key in ("cas/bug", "cas/b", "cas/c"):
        await queue.submit(key)
    assert await queue.drain(5)
    assert handler.done == ["cas/b", "cas/c"]
    assert "simulated bug" in caplog.text
    await queue.close()
    assert journal_files(tmp_path / "q") == [entry_name("cas/bug")]


# -- refill ---------------------------------------------------------------------------------------------
async def test_items_overflowing_during_a_refill_scan_are_not_stranded(tmp_path):
    """Items that overflow to the journal while a refill scans were dropped from its recount: if everything
    the scan found then fitted in memory, nothing ever refilled them (until a restart)."""
    journal = tmp_path / "q"
    journal.mkdir()
    old = [f"cas/old{i}" for i in range(40)]  # a previous run left 40 items
    for key in old:
        (journal / entry_name(key)).write_bytes(encode_entry(key))
    handled: list[str] = []
    gate, room_made, go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(key):
        await gate.wait()
        handled.append(key)
        if len(handled) == 45:  # now the scan's 40 findings fit in the memory queue
            room_made.set()
            await go.wait()

    queue = UploadQueue(journal, workers=1, maxsize=64)
    scanned, release = threading.Event(), threading.Event()
    real_read = queue._read_journal

    def held_read(known, room):
        found = real_read(known, room)
        scanned.set()
        release.wait(10)
        return found

    queue._read_journal = held_read
    try:
        await queue.start(handler)  # its refill scans, then waits for `release`
        assert await asyncio.to_thread(scanned.wait, 10)
        new = [f"cas/new{i}" for i in range(70)]  # the queue fills; the rest overflow to the journal
        for key in new:
            await queue.submit(key)
        assert queue._overflow >= 5
        gate.set()
        await room_made.wait()
        refill = queue._refill
        release.set()
        await refill
        go.set()
        assert await queue.drain(10)
    finally:
        release.set()
        await queue.close()
    assert sorted(handled) == sorted(old + new)
    assert os.listdir(journal) == []


async def test_bad_entry_set_aside_by_another_daemon_first(tmp_path, monkeypatch):
    """Two daemons find the same unreadable entry; the one whose rename to `.bad` comes second must carry
    on (the refill task used to die there, and with it the good entries it had found)."""
    journal = tmp_path / "q"
    journal.mkdir()
    (journal / ("0" * 40)).write_bytes(b"garbage")
    (journal / ("1" * 40)).write_bytes(encode_entry("cas/good"))
    real_replace = os.replace

    def racing_replace(src, dst, *args, **kw):
        if str(dst).endswith(".bad"):
            real_replace(src, dst)  # the other daemon sets it aside first
        return real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(upload_queue.os, "replace", racing_replace)
    queue = UploadQueue(journal, workers=1)
    handler = Recorder()
    await queue.start(handler)
    assert await queue.drain(5)
    assert handler.done == ["cas/good"]
    assert os.listdir(journal) == ["0" * 40 + ".bad"]
    await queue.close()


async def test_resubmit_while_waiting_for_another_daemons_lock_stays_journaled(tmp_path):
    """Daemon B took the entry and read v1; A's worker waits for B's lock when A stores v2 and resubmits.
    If A then stops before uploading, v2 must still be journaled (a resubmit in flight is written first)."""
    journal = tmp_path / "q"
    local = {"kv/ns/k": "v1", "kv/ns/other": "x"}  # the shared disk
    remote: dict[str, str] = {}
    b_read, b_go, a_busy_go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler_a(key):
        if key == "kv/ns/other":
            await a_busy_go.wait()  # A's only worker is busy (slow S3)
        remote[key] = local[key]

    async def handler_b(key):
        value = local[key]
        b_read.set()
        await b_go.wait()
        remote[key] = value

    a = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    b = UploadQueue(journal, workers=1, base_delay=0.01, max_delay=0.05)
    await a.start(handler_a)
    await b.start(handler_b)
    await a.submit("kv/ns/other")
    await a.submit("kv/ns/k")  # journaled, queued in A behind "other"
    await b.submit("kv/ns/k")  # B's worker locks the key, takes the entry, reads v1
    await b_read.wait()
    a_busy_go.set()  # A's worker now picks "k" up and waits for B's lock
    name = entry_name("kv/ns/k")
    await wait_until(lambda: name in a._inflight)
    local["kv/ns/k"] = "v2"  # A stores a newer record ...
    await a.submit("kv/ns/k")  # ... and acknowledges it
    await a.drain(0.2)  # S3 is slow: A's shutdown drain times out
    await a.close()
    b_go.set()
    assert await b.drain(5)
    await b.close()
    c = UploadQueue(journal, workers=1)  # the next daemon replays the journal

    async def handler_c(key):
        remote[key] = local[key]

    await c.start(handler_c)
    assert await c.drain(5)
    await c.close()
    assert remote["kv/ns/k"] == "v2"


async def test_an_entry_left_by_a_dead_daemon_is_uploaded_when_resubmitted_into_a_full_queue(tmp_path):
    """The key's entry exists (journaled by another daemon that then died) and this daemon's queue is full
    when the key is submitted: it must still be uploaded once there is room, not wait for a restart."""
    journal = tmp_path / "q"
    release = asyncio.Event()
    done: list[str] = []

    async def handler(key):
        await release.wait()
        done.append(key)

    queue = UploadQueue(journal, workers=1, maxsize=2)
    await queue.start(handler)
    for key in ("cas/a", "cas/b", "cas/c"):  # one in flight, two queued: full, nothing journal-only
        await queue.submit(key)
        await asyncio.sleep(0)
    (journal / entry_name("cas/left")).write_bytes(encode_entry("cas/left"))  # the dead daemon's entry
    await queue.submit("cas/left")
    release.set()
    assert await queue.drain(10)
    assert sorted(done) == ["cas/a", "cas/b", "cas/c", "cas/left"]
    await queue.close()
