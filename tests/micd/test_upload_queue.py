"""Upload queue: journaled, bounded, retried with capped backoff, drained on shutdown, replayed on restart."""

from __future__ import annotations

import asyncio
import os

import pytest

from micd.errors import FormatError, TierUnavailable
from micd.upload_queue import MAGIC, UploadQueue, decode_entry, encode_entry


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
    return sorted(name for name in os.listdir(path) if "." not in name)


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
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    await queue.submit("cas/same")
    await queue.submit("cas/same")
    assert queue.depth == 1
    handler.gate.set()
    assert await queue.drain(5)
    assert handler.done == ["cas/same"]
    await queue.close()


async def test_resubmit_while_in_flight_runs_again(tmp_path):
    """A KV record replaced during its upload must be uploaded again, or S3 keeps the old value."""
    queue = UploadQueue(tmp_path / "q", workers=1)
    handler = Recorder()
    handler.gate.clear()
    await queue.start(handler)
    await queue.submit("kv/ns/k")
    while "kv/ns/k" not in handler.calls:
        await asyncio.sleep(0.01)
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
    assert 0.25 <= loop.time() - started < 2
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
