"""Disk tier: corrupted files are never served as good bytes, and bad input fails cleanly."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from micd.store import Digest, Record
from micd.tiers.disk.ingest import WRITE_BATCH
from mickernel.errors import BadRequest, IntegrityError
from tests.micd.helpers import blob, drain, temp_files

SMALL_LIMIT = 64 << 10


@pytest.fixture
def disk_defaults() -> dict:
    return {"soft_cap": 1 << 30, "hard_cap": 2 << 30, "verify_limit": SMALL_LIMIT}


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("function", ["sha256", "blake3"])
@pytest.mark.parametrize("position", [0, 500, 999])
async def test_small_corrupt_blob_is_a_miss_and_deleted(make_tier, function, position):
    tier = await make_tier()
    data = blob(1000)
    digest = Digest.of(data, function)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    flip(path, position)
    assert await tier.get(digest) is None
    assert not path.exists()
    assert tier.corruptions == 1
    assert tier.entry_count == 0 and tier.used_bytes == 0
    assert not await tier.contains(digest)
    await tier.put_bytes(digest, data)  # the blob can be uploaded again and is good
    assert await tier.get_bytes(digest) == data


@pytest.mark.parametrize("damage", ["truncate", "extend"])
async def test_small_blob_with_wrong_length_is_a_miss(make_tier, damage):
    tier = await make_tier()
    data = blob(1000, seed=1)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    with open(path, "r+b") as handle:
        if damage == "truncate":
            handle.truncate(999)
        else:
            handle.seek(0, 2)
            handle.write(b"x")
    assert await tier.get_bytes(digest) is None
    assert not path.exists()
    assert tier.corruptions == 1


@pytest.mark.parametrize("position", [0, (3 << 20) // 2, (3 << 20) - 1])
@pytest.mark.parametrize("reopen", [False, True])
async def test_large_corrupt_blob_raises_before_a_complete_wrong_stream(
    make_tier, tmp_path, position, reopen
):
    tier = await make_tier()
    data = blob(3 << 20, seed=2)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    path = tier.layout.blob_path(digest)
    flip(path, position)
    if reopen:
        await tier.close()
        tier = await make_tier()
    handle = await tier.get(digest)
    assert handle is not None
    got, error = await drain(handle)
    assert isinstance(error, IntegrityError)
    assert len(got) < len(data)  # the last chunk was withheld
    assert not path.exists()
    assert tier.corruptions == 1
    assert await tier.get(digest) is None


async def test_large_corruption_outside_the_requested_range_is_still_detected(make_tier):
    tier = await make_tier()
    data = blob(3 << 20, seed=3)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    await tier.close()
    flip(tier.layout.blob_path(digest), len(data) - 10)
    tier = await make_tier()
    handle = await tier.get(digest, 1000, 5000)
    got, error = await drain(handle)
    assert isinstance(error, IntegrityError)
    assert got != data[1000:6000]


async def test_large_truncated_file_is_a_miss(make_tier):
    tier = await make_tier()
    data = blob(3 << 20, seed=4)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    os.truncate(tier.layout.blob_path(digest), 1 << 20)
    assert await tier.get(digest) is None
    assert tier.corruptions == 1


@pytest.mark.parametrize(
    ("namespace", "key"),
    [
        ("../escape", "k"),
        ("bazel-ac/../../x", "k"),
        ("bazel-ac/..", "k"),
        ("/abs", "k"),
        ("", "k"),
        ("ns", ".."),
        ("ns", "."),
        ("ns", "a/b"),
        ("ns", "../../etc/passwd"),
        ("ns", ""),
        ("ns", "k\x00"),
        ("ns\x00", "k"),
        ("ns", "x" * 300),
    ],
)
async def test_kv_traversal_and_malformed_names_are_rejected(make_tier, tmp_path, namespace, key):
    tier = await make_tier()
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(BadRequest):
        await tier.put_record(namespace, key, Record(b"v"))
    with pytest.raises(BadRequest):
        await tier.get_record(namespace, key)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("position", [0, 10, -1])
async def test_corrupt_record_file_is_a_miss_and_deleted(make_tier, position):
    tier = await make_tier()
    await tier.put_record("bazel-ac/main", "key", Record(b"value" * 10))
    path = tier.layout.kv_path("bazel-ac/main", "key")
    flip(path, position % path.stat().st_size)
    assert await tier.get_record("bazel-ac/main", "key") is None
    assert not path.exists()
    assert tier.corruptions == 1


async def test_record_file_for_another_name_is_not_served(make_tier):
    tier = await make_tier()
    await tier.put_record("ns", "a", Record(b"for a"))
    await tier.put_record("ns", "b", Record(b"for b"))
    os.replace(tier.layout.kv_path("ns", "a"), tier.layout.kv_path("ns", "b"))
    assert await tier.get_record("ns", "b") is None
    assert tier.corruptions == 1


async def test_failed_puts_leave_no_temp_files(make_tier):
    tier = await make_tier()
    data = blob(10 << 20, seed=6)
    digest = Digest.of(data)
    with pytest.raises(IntegrityError):
        await tier.put_bytes(digest, data[:-1] + b"\x00")
    with pytest.raises(IntegrityError):
        await tier.put_bytes(Digest(digest.function, digest.hex, digest.size - 5), data)
    assert temp_files(tier) == []
    assert tier.used_bytes == 0 and tier.stats()["reserved_bytes"] == 0


async def test_get_bytes_of_a_corrupt_large_blob_is_a_miss(make_tier):
    tier = await make_tier()
    data = blob(3 << 20, seed=7)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    await tier.close()
    flip(tier.layout.blob_path(digest), 12345)
    tier = await make_tier()
    assert await tier.get_bytes(digest) is None
    assert tier.corruptions == 1 and not tier.layout.blob_path(digest).exists()


async def _stream(data: bytes, fail_after: int | None = None):
    """`data` in 1 MiB chunks; raises ConnectionResetError once `fail_after` bytes were sent."""
    for pos in range(0, len(data), 1 << 20):
        if fail_after is not None and pos >= fail_after:
            raise ConnectionResetError("client went away")
        yield data[pos : pos + (1 << 20)]
        await asyncio.sleep(0)  # let the batch in flight run, as a network read would


async def test_pipelined_upload_spanning_several_batches(make_tier):
    """Batches hash and write while the next one arrives: the stored bytes and the verdict are those of the
    whole stream, in order."""
    tier = await make_tier()
    data = blob(WRITE_BATCH * 3 + 12345, seed=8)
    digest = Digest.of(data)
    await tier.put(digest, _stream(data))
    assert tier.layout.blob_path(digest).read_bytes() == data

    bad = bytearray(data)
    bad[5] ^= 1  # in the first batch: detected only once the stream is complete
    other = Digest.of(bytes(bad[:-1]) + b"x")
    with pytest.raises(IntegrityError):
        await tier.put(other, _stream(bytes(bad)))
    assert not tier.layout.blob_path(other).exists()


async def test_stream_failing_while_a_batch_is_in_flight_leaves_nothing(make_tier):
    tier = await make_tier()
    data = blob(WRITE_BATCH * 3, seed=9)
    digest = Digest.of(data)
    with pytest.raises(ConnectionResetError):
        await tier.put(digest, _stream(data, fail_after=WRITE_BATCH * 2 + (1 << 20)))
    assert not tier.layout.blob_path(digest).exists()
    assert temp_files(tier) == []
    assert tier.stats()["reserved_bytes"] == 0
    await tier.put(digest, _stream(data))  # and a retry stores it
    assert await tier.get_bytes(digest) == data


async def test_multi_batch_reads_read_ahead_in_order(make_tier):
    """Reads of several worker-thread batches (the next one read while this one is sent) stay in order, whole
    or as a range spanning batches, and a damaged later batch still fails the stream."""
    from micd.tiers.disk.blob import _BATCH

    tier = await make_tier()
    data = blob(2 * _BATCH + 12345, seed=9)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    assert (await drain(await tier.get(digest))) == (data, None)
    spanning = await tier.get(digest, _BATCH - 10, _BATCH + 20)
    assert (await drain(spanning)) == (data[_BATCH - 10 : 2 * _BATCH + 10], None)
    flip(tier.layout.blob_path(digest), 2 * _BATCH + 100)  # inside the last batch
    damaged = await tier.get(digest)
    got, error = await drain(damaged)
    assert isinstance(error, IntegrityError)
    assert len(got) < len(data)


async def test_reader_stopping_early_leaves_no_read_behind(make_tier):
    """A client that goes away mid-stream: the read-ahead finishes before the fd closes, nothing leaks and no
    background task fails unobserved."""
    from micd.tiers.disk.blob import _BATCH

    tier = await make_tier()
    data = blob(3 * _BATCH, seed=10)
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    loop = asyncio.get_running_loop()
    unobserved = []
    loop.set_exception_handler(lambda _loop, context: unobserved.append(context))
    fds_before = len(os.listdir("/proc/self/fd"))
    handle = await tier.get(digest)
    chunks = handle.chunks()
    first = await anext(chunks)
    assert first == data[: len(first)]
    await chunks.aclose()
    assert handle._fd is None
    await asyncio.sleep(0.05)
    assert unobserved == []
    assert len(os.listdir("/proc/self/fd")) <= fds_before
