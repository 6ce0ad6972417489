"""S3 tier against a real S3-compatible server (moto) behind a cuttable proxy: layout, integrity, request
economy (existence cache, in-flight de-duplication), failures as TierUnavailable, bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import tracemalloc

import pytest
import zstandard

from micd.errors import TierUnavailable
from micd.record import decode_record, encode_record
from micd.store import Digest, Record
from micd.tiers.disk.kvfile import decode_kv_file
from micd.tiers.memory import MemoryTier
from micd.tiers.s3 import S3Tier
from micd.tiers.tiered import TieredStore
from micd.upload_queue import UploadQueue
from mickernel.errors import BadRequest, IntegrityError
from tests.fixtures.s3 import TcpProxy
from tests.micd.helpers import FAST_FAILING_S3, count_requests, read, s3_keys, wait_until

pytestmark = pytest.mark.timeout(120)

PREFIX = "team/mic"


@pytest.fixture
async def tier(s3_proxy, bucket):
    tier = S3Tier(
        bucket=bucket,
        prefix=PREFIX,
        endpoint_url=s3_proxy.endpoint_url,
        **FAST_FAILING_S3,
    )
    await tier.open()
    yield tier
    await tier.close()


async def test_blob_layout_is_prefixed_sharded_zstd(tier, boto, bucket):
    data = b"hello, cache" * 100
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    key = f"{PREFIX}/cas/sha256/{digest.hex[:2]}/{digest.hex}.{digest.size}"
    assert s3_keys(boto, bucket) == [key]
    body = boto.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) < len(data)
    assert zstandard.ZstdDecompressor().decompress(body) == data

    tier._exists.clear()
    assert await tier.contains(digest)
    assert await tier.get_bytes(digest) == data
    assert await read(await tier.get(digest, 5, 7)) == data[5:12]
    assert await read(await tier.get(digest, len(data))) == b""
    with pytest.raises(BadRequest):
        await tier.get(digest, len(data) + 1)


async def test_blake3_and_empty_blobs(tier):
    data = os.urandom(5000)
    digest = Digest.of(data, "blake3")
    await tier.put_bytes(digest, data)
    tier._exists.clear()
    assert await tier.get_bytes(digest) == data
    empty = Digest.empty()
    assert await tier.contains(empty)
    assert await tier.get_bytes(empty) == b""
    assert await tier.find_missing([empty, digest]) == []


async def test_find_missing_keeps_order_and_duplicates(tier):
    present = [Digest.of(f"p{i}".encode()) for i in range(3)]
    absent = [Digest.of(f"a{i}".encode()) for i in range(3)]
    for digest, data in zip(present, (b"p0", b"p1", b"p2"), strict=True):
        await tier.put_bytes(digest, data)
    tier._exists.clear()
    query = [absent[0], present[0], absent[1], absent[0], present[2], absent[2]]
    assert await tier.find_missing(query) == [absent[0], absent[1], absent[0], absent[2]]


async def test_records_round_trip_under_kv_prefix(tier, boto, bucket):
    ref = Digest.of(b"x")
    record = Record(b"value", (ref,), (("content-type", "application/octet-stream"),))
    await tier.put_record("bazel-ac/main/inst", "k1", record)
    assert s3_keys(boto, bucket) == [f"{PREFIX}/kv/bazel-ac/main/inst/k1"]
    assert await tier.get_record("bazel-ac/main/inst", "k1") == record
    assert await tier.get_record("bazel-ac/main/inst", "nope") is None
    record2 = Record(b"v2")
    await tier.put_record("bazel-ac/main/inst", "k1", record2)
    assert await tier.get_record("bazel-ac/main/inst", "k1") == record2


@pytest.mark.parametrize("size", [200_000, 3 << 20])
async def test_records_larger_than_one_network_read_round_trip(tier, size):
    record = Record(os.urandom(size), (Digest.of(b"x"),))
    await tier.put_record("bazel-ac/main", "big", record)
    assert await tier.get_record("bazel-ac/main", "big") == record


async def test_oversized_record_is_a_miss_without_reading_it(tier, monkeypatch, caplog):
    await tier.put_record("ns", "big", Record(bytes(5000)))
    monkeypatch.setattr("micd.tiers.s3._MAX_RECORD", 4096)
    assert await tier.get_record("ns", "big") is None
    assert "record too large" in caplog.text


async def test_right_hash_wrong_size_is_a_miss_and_keeps_the_real_object(tier, boto, bucket, caplog):
    """A digest is hash and size: a client sending the right hash with a wrong size must neither get a hit nor
    make the tier delete the valid object (as a size mismatch on download would, if the key had no size)."""
    data = os.urandom(5000)
    real = Digest.of(data)
    await tier.put_bytes(real, data)
    for wrong in (Digest(real.function, real.hex, real.size + 1), Digest(real.function, real.hex, 10)):
        tier._exists.clear()
        assert await tier.find_missing([wrong]) == [wrong]
        assert not await tier.contains(wrong)
        assert await tier.get(wrong) is None
    assert "does not match" not in caplog.text
    assert len(s3_keys(boto, bucket)) == 1
    tier._exists.clear()
    assert await tier.get_bytes(real) == data


async def test_unreadable_record_is_a_miss(tier, boto, bucket, caplog):
    boto.put_object(Bucket=bucket, Key=f"{PREFIX}/kv/ns/bad", Body=b"MICR\x01garbage")
    assert await tier.get_record("ns", "bad") is None
    assert "unreadable" in caplog.text


async def test_record_body_is_bound_to_its_namespace_and_key(tier, boto, bucket):
    record = Record(b"value", (Digest.of(b"x"),), (("content-type", "text/plain"),))
    await tier.put_record("bazel-ac/main", "k1", record)
    body = boto.get_object(Bucket=bucket, Key=tier.kv_key("bazel-ac/main", "k1"))["Body"].read()
    namespace, key, raw = decode_kv_file(body)
    assert (namespace, key) == ("bazel-ac/main", "k1")
    assert decode_record(raw) == record


def _record_corruptions(body: bytes) -> dict[str, bytes]:
    def flip(pos: int) -> bytes:
        flipped = bytearray(body)
        flipped[pos] ^= 0x10
        return bytes(flipped)

    return {
        "bit flipped in the header": flip(6),
        "bit flipped in the middle": flip(len(body) // 2),
        "bit flipped in the last byte": flip(len(body) - 1),
        "truncated by one byte": body[:-1],
        "truncated to a stub": body[:8],
        "empty": b"",
        "unknown version": body[:4] + b"\x63" + body[5:],
    }


@pytest.mark.parametrize("kind", list(_record_corruptions(bytes(64))))
async def test_corrupt_record_is_a_miss_and_deleted(tier, boto, bucket, kind, caplog):
    """A flipped bit could still decode as a valid, wrong record: the checksum makes it a miss, and the object
    is deleted (as a corrupt blob is). The neighbour is untouched and a new upload repairs the key."""
    record = Record(b"value " * 20, (Digest.of(b"x"),), (("content-type", "text/plain"),))
    neighbour = Record(b"neighbour")
    await tier.put_record("ns/a", "k", record)
    await tier.put_record("ns/a", "other", neighbour)
    key = tier.kv_key("ns/a", "k")
    body = boto.get_object(Bucket=bucket, Key=key)["Body"].read()
    boto.put_object(Bucket=bucket, Key=key, Body=_record_corruptions(body)[kind])
    assert await tier.get_record("ns/a", "k") is None
    assert "unreadable" in caplog.text
    assert s3_keys(boto, bucket) == [tier.kv_key("ns/a", "other")]
    assert await tier.get_record("ns/a", "other") == neighbour
    assert tier.state == "ok"  # corruption is not an S3 failure
    await tier.put_record("ns/a", "k", record)
    assert await tier.get_record("ns/a", "k") == record


@pytest.mark.parametrize(
    ("first", "second"),
    [(("ns", "k1"), ("ns", "k2")), (("ns/one", "k"), ("ns/two", "k"))],
    ids=["key", "namespace"],
)
async def test_records_swapped_between_keys_are_misses_and_deleted(tier, boto, bucket, first, second, caplog):
    """A valid record stored under another record's key (a copy error, a bad restore) is not served there."""
    await tier.put_record(*first, Record(b"first"))
    await tier.put_record(*second, Record(b"second"))
    keys = [tier.kv_key(*first), tier.kv_key(*second)]
    bodies = [boto.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    for key, body in zip(keys, reversed(bodies), strict=True):
        boto.put_object(Bucket=bucket, Key=key, Body=body)
    assert await tier.get_record(*first) is None
    assert await tier.get_record(*second) is None
    assert "names another record" in caplog.text
    assert s3_keys(boto, bucket) == []


async def test_record_without_envelope_is_a_miss_and_deleted(tier, boto, bucket):
    """Records written before the envelope existed carry no checksum, so they are not trusted."""
    boto.put_object(Bucket=bucket, Key=tier.kv_key("ns", "old"), Body=encode_record(Record(b"old")))
    assert await tier.get_record("ns", "old") is None
    assert s3_keys(boto, bucket) == []


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_mismatched_upload_is_rejected_and_nothing_stored(tier, boto, bucket, size):
    data = os.urandom(size)
    digest = Digest.of(data)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(IntegrityError):
        await tier.put_bytes(digest, bad)
    with pytest.raises(IntegrityError):
        await tier.put_bytes(digest, data + b"!")
    with pytest.raises(IntegrityError):
        await tier.put_bytes(digest, data[:-1])
    assert s3_keys(boto, bucket) == []
    assert not tier.known(digest)


def _corruptions(data: bytes) -> dict[str, bytes]:
    cctx = zstandard.ZstdCompressor()
    good = cctx.compress(data)
    other = bytearray(data)
    other[len(other) // 2] ^= 0xFF
    return {
        "not zstd": b"definitely not a zstd frame",
        "same size, other bytes": cctx.compress(bytes(other)),
        "truncated frame": good[: len(good) // 2],
        "too long (bomb)": cctx.compress(data + bytes(32 << 20)),
        "too short": cctx.compress(data[:-10]),
    }


@pytest.mark.parametrize("size", [4096, 3 << 20])
@pytest.mark.parametrize("kind", list(_corruptions(b"x" * 64)))
async def test_corrupt_object_is_a_miss_then_repaired(tier, boto, bucket, size, kind, caplog):
    data = os.urandom(size)
    digest = Digest.of(data)
    key = tier.cas_key(digest)
    boto.put_object(Bucket=bucket, Key=key, Body=_corruptions(data)[kind])
    assert await tier.contains(digest)  # HEAD cannot see corruption ...
    assert await tier.get(digest) is None  # ... the verified download does
    assert "does not match its digest" in caplog.text
    assert s3_keys(boto, bucket) == []  # deleted so that the next upload repairs it
    assert not await tier.contains(digest)
    await tier.put_bytes(digest, data)
    assert await tier.get_bytes(digest) == data


async def test_concurrent_reads_share_one_download(tier, boto, bucket):
    small, large = os.urandom(10_000), os.urandom(3 << 20)
    for data in (small, large):
        boto.put_object(Bucket=bucket, Key=tier.cas_key(Digest.of(data)), Body=zstandard.compress(data))
    counts = count_requests(tier)
    for data in (small, large):
        digest = Digest.of(data)
        blobs = await asyncio.gather(*(tier.get(digest, i, 100) for i in range(20)))
        assert [await read(b) for b in blobs] == [data[i : i + 100] for i in range(20)]
    assert counts["GetObject"] == 2
    assert not tier._downloads
    # a late reader after the download finished gets its own, correct copy
    assert await tier.get_bytes(Digest.of(large)) == large
    assert counts["GetObject"] == 3


async def test_unclosed_readers_dont_break_others(tier, boto, bucket):
    data = os.urandom(2 << 20)
    digest = Digest.of(data)
    boto.put_object(Bucket=bucket, Key=tier.cas_key(digest), Body=zstandard.compress(data))
    first, second = await asyncio.gather(tier.get(digest), tier.get(digest))
    await first.aclose()
    assert await read(second) == data
    view = (await tier.get(digest)).view(10, 20)
    assert await read(view) == data[10:30]


async def test_existence_cache_and_head_dedup(tier):
    data = b"seen once"
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    tier._exists.clear()
    counts = count_requests(tier)
    assert all(await asyncio.gather(*(tier.contains(digest) for _ in range(25))))
    assert counts["HeadObject"] == 1
    assert await tier.contains(digest)
    assert await tier.find_missing([digest] * 10) == []
    assert counts["HeadObject"] == 1  # positive answers are cached
    missing = Digest.of(b"never")
    assert not await tier.contains(missing)
    assert not await tier.contains(missing)
    assert counts["HeadObject"] == 3  # negative answers are not (someone may upload it)
    assert sum(counts.values()) == 3


async def test_resolve_lists_once_then_answers_from_the_existence_cache(tier, boto, bucket):
    data = b"uploaded by another daemon" * 10
    digest = Digest.of(data)
    boto.put_object(Bucket=bucket, Key=tier.cas_key(digest), Body=zstandard.compress(data))
    counts = count_requests(tier)
    assert await asyncio.gather(*(tier.resolve("sha256", digest.hex) for _ in range(10))) == [digest] * 10
    assert counts["ListObjectsV2"] == 1
    assert await tier.resolve("sha256", digest.hex) == digest
    assert await tier.contains(digest)
    assert sum(counts.values()) == 1  # the size, and the existence, came from the cache
    absent = Digest.of(b"never uploaded")
    assert await tier.resolve("sha256", absent.hex) is None
    assert await tier.resolve("sha256", absent.hex) is None
    assert counts["ListObjectsV2"] == 3  # misses are not cached (someone may upload it)
    assert await tier.resolve("sha256", Digest.empty().hex) == Digest.empty()
    assert sum(counts.values()) == 3


async def test_resolve_ignores_keys_that_name_no_blob_of_the_hash(tier, boto, bucket):
    digest = Digest.of(b"named wrongly")
    base = tier.cas_key(digest).rpartition(".")[0]
    for junk in (f"{base}.0", f"{base}.x", f"{base}.12.zst"):  # size 0 with a non-empty hash names nothing
        boto.put_object(Bucket=bucket, Key=junk, Body=b"")
    assert await tier.resolve("sha256", digest.hex) is None
    await tier.put_bytes(digest, b"named wrongly")
    tier._exists.clear()
    assert await tier.resolve("sha256", digest.hex) == digest


async def test_existence_cache_is_bounded(s3_proxy, bucket):
    tier = S3Tier(bucket=bucket, endpoint_url=s3_proxy.endpoint_url, existence_cache_size=2)
    await tier.open()
    try:
        for i in range(4):
            await tier.put_bytes(Digest.of(b"%d" % i), b"%d" % i)
        assert len(tier._exists) == 2
        assert tier.known(Digest.of(b"3")) and not tier.known(Digest.of(b"0"))
    finally:
        await tier.close()


async def test_outage_is_tier_unavailable_fast_and_recovers(tier, s3_proxy, caplog):
    data = b"before the outage"
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    s3_proxy.cut()
    other = Digest.of(b"other")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="micd.tiers.s3"):
        for call in (
            tier.contains(other),
            tier.find_missing([other, Digest.of(b"more")]),
            tier.resolve("sha256", other.hex),
            tier.get(other),
            tier.put_bytes(other, b"other"),
            tier.get_record("ns", "k"),
            tier.put_record("ns", "k", Record(b"v")),
        ):
            with pytest.raises(TierUnavailable):
                await call
    assert time.monotonic() - started < 10
    assert tier.state == "degraded" and tier.errors >= 1
    assert "S3 tier degraded" in caplog.text
    assert await tier.contains(digest)  # known blobs need no request
    s3_proxy.restore()
    await asyncio.sleep(0.25)  # past the cool-down
    assert await tier.get_bytes(digest) == data
    assert tier.state == "ok"


async def test_throttling_and_5xx_are_tier_unavailable(tier, s3_proxy):
    s3_proxy.answer = TcpProxy.SLOW_DOWN
    digest = Digest.of(b"throttled")
    with pytest.raises(TierUnavailable, match="SlowDown"):
        await tier.contains(digest)
    await asyncio.sleep(0.1)
    with pytest.raises(TierUnavailable):
        await tier.get(digest)
    assert tier.state == "degraded"
    s3_proxy.answer = None
    await asyncio.sleep(0.25)
    assert not await tier.contains(digest)
    assert tier.state == "ok"


async def test_unopened_tier_and_bad_arguments():
    with pytest.raises(ValueError):
        S3Tier(bucket="")
    with pytest.raises(ValueError):
        S3Tier(bucket="b", part_size=1 << 20)
    tier = S3Tier(bucket="b")
    with pytest.raises(TierUnavailable, match="not open"):
        await tier.contains(Digest.of(b"x"))


def write_big_file(path, size: int, chunk: int) -> Digest:
    """Half random, half repetitive: compressible enough to test zstd, large enough for multipart."""
    hasher = hashlib.sha256()
    with open(path, "wb") as file:
        for i in range(size // chunk):
            block = os.urandom(chunk // 2) * 2 if i % 2 else os.urandom(chunk)
            hasher.update(block)
            file.write(block)
    return Digest("sha256", hasher.hexdigest(), size)


async def test_large_blob_round_trips_with_bounded_memory(tier, tmp_path, boto, bucket):
    size, chunk = 64 << 20, 1 << 20
    path = tmp_path / "big"
    digest = await asyncio.to_thread(write_big_file, path, size, chunk)

    async def from_file():
        file = await asyncio.to_thread(open, path, "rb")
        try:
            while block := await asyncio.to_thread(file.read, chunk):
                yield block
        finally:
            file.close()

    counts = count_requests(tier)
    tracemalloc.start()
    try:
        await tier.put(digest, from_file())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        tier._exists.clear()
        blob = await tier.get(digest)
        check = hashlib.sha256()
        async for block in blob.chunks():
            check.update(block)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check.hexdigest() == digest.hex
    assert counts["UploadPart"] >= 5 and counts["CompleteMultipartUpload"] == 1
    assert counts["GetObject"] == 1
    # one 8 MiB part (plus botocore's copy of it) and a few chunks in flight, never the 64 MiB blob
    assert put_peak < 32 << 20, put_peak
    assert get_peak < 16 << 20, get_peak
    assert boto.head_object(Bucket=bucket, Key=tier.cas_key(digest))["ContentLength"] < size


async def test_hung_server_times_out_into_tier_unavailable(s3_proxy, bucket):
    tier = S3Tier(bucket=bucket, endpoint_url=s3_proxy.endpoint_url, max_attempts=1, read_timeout=0.5)
    await tier.open()
    try:
        s3_proxy.stall = True
        started = time.monotonic()
        with pytest.raises(TierUnavailable):
            await tier.contains(Digest.of(b"hung"))
        assert time.monotonic() - started < 5
        with pytest.raises(TierUnavailable, match="cooling down"):  # no second wait while degraded
            await tier.get(Digest.of(b"hung"))
        assert time.monotonic() - started < 5
    finally:
        s3_proxy.cut()
        await tier.close()


HUNG_BUDGET = 5.0
"""Seconds a request-path read may wait on a hung S3: the 2 s default deadline, with room for a loaded machine
(before the deadline, botocore's 15 s read timeout made it wait 15 s per attempt, 30 s in all)."""


@pytest.fixture
async def daemon_tier(s3_proxy, bucket):
    """An S3 tier with the daemon's timeouts (none shortened for tests). Its cool-down is long and fixed, so
    that "the next read skips S3" cannot depend on how fast a loaded machine gets to that next read."""
    tier = S3Tier(bucket=bucket, prefix=PREFIX, endpoint_url=s3_proxy.endpoint_url, cooldown=(60, 60))
    await tier.open()
    yield tier
    await tier.close()


_HUNG_READS = {
    "contains": lambda tier, digest: tier.contains(digest),
    "find_missing": lambda tier, digest: tier.find_missing([digest, Digest.of(b"more")]),
    "get": lambda tier, digest: tier.get(digest),
    "get_record": lambda tier, digest: tier.get_record("ns", digest.hex),
}


@pytest.mark.parametrize("read", list(_HUNG_READS))
async def test_hung_s3_read_gives_up_within_budget_then_skips_s3(daemon_tier, s3_proxy, read):
    """A server that accepts and never answers: the first read fails within the budget and degrades the
    tier; the next reads fail at once, without a request."""
    s3_proxy.stall = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TierUnavailable):
        await _HUNG_READS[read](daemon_tier, Digest.of(b"hung"))
    assert loop.time() - started < HUNG_BUDGET
    assert daemon_tier.state == "degraded"
    connections = s3_proxy.connections
    started = loop.time()
    for other in _HUNG_READS.values():
        with pytest.raises(TierUnavailable, match="cooling down"):
            await other(daemon_tier, Digest.of(b"next"))
    assert loop.time() - started < 0.5
    assert s3_proxy.connections == connections


def _stalled_response(length: int, start: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    return head.encode() + start


@pytest.mark.parametrize(
    ("what", "size", "budget"),
    [("record", 0, HUNG_BUDGET), ("blob", 1000, HUNG_BUDGET), ("blob", 3 << 20, 10.0)],
    ids=["record", "small blob", "large blob"],
)
async def test_stalled_body_gives_up_within_budget(daemon_tier, s3_proxy, what, size, budget):
    """Headers and the first bytes, then silence. A large blob may wait longer (5 s between chunks, a stall
    bound rather than a transfer bound), but not botocore's 15 s."""
    data = os.urandom(size)
    frame = zstandard.compress(data)  # a valid start, so nothing fails before the stall
    s3_proxy.stall_after = _stalled_response(len(frame) + 1000, frame[:100])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TierUnavailable):
        if what == "record":
            await daemon_tier.get_record("ns", "stalled")
        else:
            await daemon_tier.get(Digest.of(data))
    assert loop.time() - started < budget
    assert daemon_tier.state == "degraded"


async def test_hung_s3_read_through_is_a_quick_miss_and_shutdown_is_bounded(tmp_path, s3_proxy, bucket):
    """Through the tiered store, as a client sees it: a miss, not an error, within the budget; the next misses
    skip S3; a shutdown with an upload pending against the hung S3 stays within the drain bound."""
    tier = S3Tier(bucket=bucket, prefix=PREFIX, endpoint_url=s3_proxy.endpoint_url, cooldown=(60, 60))
    store = TieredStore(
        memory=MemoryTier(), s3=tier, queue=UploadQueue(tmp_path / "queue", base_delay=0.05, max_delay=0.5)
    )
    await store.start()
    loop = asyncio.get_running_loop()
    try:
        s3_proxy.stall = True
        started = loop.time()
        assert await store.get_record("ns", "absent") is None
        assert loop.time() - started < HUNG_BUDGET
        started = loop.time()
        digest = Digest.of(b"absent")
        assert await store.get(digest) is None
        assert await store.find_missing([digest]) == [digest]
        assert loop.time() - started < 0.5
        await store.put_record("ns", "pending", Record(b"v"))
    finally:
        started = loop.time()
        await store.close(drain_timeout=1)
    assert loop.time() - started < 1 + HUNG_BUDGET


async def test_upload_hung_in_flight_does_not_hold_shutdown_past_the_drain_bound(tmp_path, s3_proxy, bucket):
    """Uploads are not on a client's path and keep their long timeout; a shutdown cuts them at the drain
    bound even while the tier still looks healthy, and the upload stays journaled."""
    tier = S3Tier(bucket=bucket, prefix=PREFIX, endpoint_url=s3_proxy.endpoint_url)
    journal = tmp_path / "queue"
    store = TieredStore(memory=MemoryTier(), s3=tier, queue=UploadQueue(journal))
    await store.start()
    s3_proxy.stall = True
    await store.put_record("ns", "pending", Record(b"v"))
    await wait_until(lambda: s3_proxy.connections > 0)  # the PUT is in flight, and hangs
    assert tier.state == "ok"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await store.close(drain_timeout=1)
    assert loop.time() - started < 3
    assert [p for p in journal.iterdir() if not p.name.endswith(".lock")]


async def test_object_deleted_behind_the_cache_is_forgotten(tier, boto, bucket):
    data = b"expired by a lifecycle rule"
    digest = Digest.of(data)
    await tier.put_bytes(digest, data)
    assert tier.known(digest)
    boto.delete_object(Bucket=bucket, Key=tier.cas_key(digest))
    assert await tier.get(digest) is None
    assert not tier.known(digest) and not await tier.contains(digest)


async def test_one_probe_at_a_time_while_degraded(s3_proxy, bucket):
    # A cool-down far longer than any stall of a loaded machine, ended by hand: all 20 calls below must come
    # within it, and with a 0.05 s one a stall let a second probe through.
    options = {**FAST_FAILING_S3, "cooldown": (600, 600)}
    tier = S3Tier(bucket=bucket, prefix=PREFIX, endpoint_url=s3_proxy.endpoint_url, **options)
    await tier.open()
    s3_proxy.cut()
    try:
        with pytest.raises(TierUnavailable):
            await tier.contains(Digest.of(b"first"))
        tier._health._down_until = 0  # the cool-down is over: the next call probes
        counts = count_requests(tier)
        results = await asyncio.gather(
            *(tier.contains(Digest.of(b"%d" % i)) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, TierUnavailable) for r in results)
        assert counts["HeadObject"] == 1  # only the probe reached for the network
    finally:
        s3_proxy.restore()
        await tier.close()


async def test_missing_bucket_is_a_failure_not_a_miss(s3_proxy, s3_env, caplog):
    tier = S3Tier(
        bucket="no-such-bucket-here", endpoint_url=s3_proxy.endpoint_url, max_attempts=1, cooldown=(0.05, 0.1)
    )
    await tier.open()
    try:
        data = b"must not vanish"
        with pytest.raises(TierUnavailable, match="NoSuchBucket"):
            await tier.put_bytes(Digest.of(data), data)
        await asyncio.sleep(0.15)  # past the cool-down
        with pytest.raises(TierUnavailable, match="NoSuchBucket"):
            await tier.put_record("ns", "k", Record(b"v"))
        await asyncio.sleep(0.15)
        with pytest.raises(TierUnavailable, match="NoSuchBucket"):
            await tier.get(Digest.of(data))
        assert tier.state == "degraded" and "NoSuchBucket" in caplog.text
    finally:
        await tier.close()


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_concurrent_puts_share_one_upload(tier, size):
    data = os.urandom(size)
    digest = Digest.of(data)
    counts = count_requests(tier)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    results = await asyncio.gather(
        *(tier.put_bytes(digest, bad if i == 3 else data) for i in range(8)), return_exceptions=True
    )
    assert [type(r) for r in results].count(IntegrityError) == 1  # each put still checks its own bytes
    assert results.count(None) == 7
    assert counts["PutObject"] == 1
    assert not tier._uploads and tier.known(digest)
    tier._exists.clear()
    assert await tier.get_bytes(digest) == data
