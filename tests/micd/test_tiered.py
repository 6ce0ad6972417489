"""TieredStore over memory + disk + real S3 (moto behind a cuttable proxy): read-through, write-behind,
outages with zero lost uploads, restart replay, corrupt S3 objects, record reference checks, metrics."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import zstandard

from micd.errors import StoreFull
from micd.metrics import Metrics
from micd.store import Digest, Record
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.s3 import S3Tier
from micd.tiers.tiered import TieredStore
from micd.tiers.toolview import ForeignNamespace
from micd.upload_queue import UploadQueue
from tests.micd.helpers import FAST_FAILING_S3, count_requests, read, s3_keys

pytestmark = pytest.mark.timeout(120)

PREFIX = "tiered"


def make_store(
    root: Path, endpoint: str, bucket: str, *, maxsize: int = 1000, hard_cap: int = 1 << 30, **s3_options
) -> TieredStore:
    s3_options = {**FAST_FAILING_S3, **s3_options}
    return TieredStore(
        memory=MemoryTier(budget=32 << 20),
        disk=DiskTier(root / "cache", soft_cap=hard_cap, hard_cap=hard_cap, verify_limit=1 << 20),
        s3=S3Tier(bucket=bucket, prefix=PREFIX, endpoint_url=endpoint, **s3_options),
        queue=UploadQueue(
            root / "cache" / "v1" / "s3-queue", workers=4, maxsize=maxsize, base_delay=0.05, max_delay=0.2
        ),
        metrics=Metrics(),
    )  # fmt: skip


@pytest.fixture
async def store(tmp_path, s3_proxy, bucket):
    made = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await made.start()
    yield made
    await made.close(drain_timeout=0)


def blobs(n: int, size: int = 2000, seed: int = 0) -> list[tuple[Digest, bytes]]:
    out = []
    for i in range(n):
        data = (b"%d-%d|" % (seed, i)) * (size // 8)
        out.append((Digest.of(data), data))
    return out


def series(store: TieredStore) -> dict:
    return store.metrics.snapshot()["series"]


async def test_write_behind_uploads_blobs_and_records(store, boto, bucket):
    items = blobs(10) + [(Digest.of(big := os.urandom(3 << 20)), big)]
    for digest, data in items:
        await store.put_bytes(digest, data)
    await store.put_record("bazel-ac/main", "k1", Record(b"result", (items[0][0],)))
    assert await store.queue.drain(20)
    expected = sorted([store.s3.cas_key(d) for d, _ in items] + [f"{PREFIX}/kv/bazel-ac/main/k1"])
    assert s3_keys(boto, bucket) == expected
    stats = store.stats()
    assert stats["upload_queue"]["depth"] == 0 and stats["upload_queue"]["uploaded"] == 12
    assert stats["s3"]["state"] == "ok" and stats["disk"]["entries"] == 12
    assert series(store)["upload/s3/put"]["count"] == 12
    assert store.metrics.snapshot()["gauges"]["upload_queue_depth"] == 0


@pytest.mark.parametrize("announced", [True, False], ids=["announced", "unknown-size"])
async def test_put_stream_is_kept_in_memory_written_behind_and_counted_per_tool(
    store, boto, bucket, announced
):
    turbo = store.for_tool("turbo", ("turbo",))
    (small, small_data), (big, big_data) = blobs(1, seed=9)[0], (Digest.of(b := os.urandom(3 << 20)), b)
    for digest, data in ((small, small_data), (big, big_data)):
        chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))

        async def body(chunks=chunks):
            for chunk in chunks:
                yield chunk

        assert await turbo.put_stream("sha256", body(), len(data) if announced else None) == digest
    assert small in store.memory._blobs and big not in store.memory._blobs  # written through when small
    assert await store.queue.drain(20)
    assert s3_keys(boto, bucket) == sorted([store.s3.cas_key(small), store.s3.cas_key(big)])
    got = series(store)
    assert got["turbo/all/put"]["count"] == 2
    assert got["turbo/all/put"]["bytes"] == len(small_data) + len(big_data)
    assert got["turbo/disk/put"]["count"] == 2


async def test_s3_outage_mid_run_loses_nothing(tmp_path, s3_proxy, bucket, boto):
    store = make_store(
        tmp_path, s3_proxy.endpoint_url, bucket, maxsize=4
    )  # small: exercises journal overflow
    await store.start()
    try:
        before = blobs(5, seed=1)
        for digest, data in before:
            await store.put_bytes(digest, data)
        assert await store.queue.drain(20)
        s3_proxy.cut()
        during = blobs(30, seed=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i, (digest, data) in enumerate(during):
            await store.put_bytes(digest, data)
            await store.put_record("turbo/team", f"k{i}", Record(b"meta", (digest,)))
        for digest, data in before + during:
            assert await store.get_bytes(digest) == data
        assert (await store.get_record("turbo/team", "k3")).refs == (during[3][0],)
        unknown = Digest.of(b"nowhere")
        assert await store.find_missing([unknown, during[0][0]]) == [unknown]
        assert await store.get(unknown) is None
        assert loop.time() - started < 20  # never waits on S3
        stats = store.stats()
        assert stats["s3"]["state"] == "degraded" and stats["errors"]["s3"] > 0
        assert stats["upload_queue"]["depth"] == 60
        assert store.metrics.snapshot()["counters"]["s3_errors_total"] > 0
        assert store.metrics.snapshot()["gauges"]["upload_queue_depth"] == 60

        s3_proxy.restore()
        assert await store.queue.drain(60)
        keys = s3_keys(boto, bucket)
        assert len(keys) == 5 + 30 + 30
        assert set(keys) >= {store.s3.cas_key(d) for d, _ in before + during}
        assert store.stats()["s3"]["state"] == "ok"
    finally:
        await store.close(drain_timeout=0)


async def test_pending_uploads_survive_a_restart(tmp_path, s3_proxy, bucket, boto):
    first = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await first.start()
    s3_proxy.cut()
    items = blobs(8, seed=3)
    for digest, data in items:
        await first.put_bytes(digest, data)
    await first.put_record("gradle", "cachekey", Record(b"", (items[0][0],)))
    await first.close(drain_timeout=0.2)  # S3 still down: the journal keeps all 9
    journal = tmp_path / "cache" / "v1" / "s3-queue"
    assert len([p for p in journal.iterdir() if "." not in p.name]) == 9
    assert s3_keys(boto, bucket) == []

    s3_proxy.restore()
    second = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await second.start()
    try:
        assert await second.queue.drain(20)
        assert len(s3_keys(boto, bucket)) == 9
        assert list(journal.iterdir()) == []
    finally:
        await second.close()


async def test_disk_wiped_reads_come_from_s3_and_refill(tmp_path, s3_proxy, bucket):
    small = blobs(3, seed=4)
    big = os.urandom(3 << 20)
    items = [*small, (Digest.of(big), big)]
    first = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await first.start()
    for digest, data in items:
        await first.put_bytes(digest, data)
    await first.put_record("bazel-ac/x", "action", Record(b"ar", tuple(d for d, _ in items)))
    await first.close(drain_timeout=20)
    shutil.rmtree(tmp_path / "cache")

    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await store.start()
    try:
        counts = count_requests(store.s3)
        record = await store.get_record("bazel-ac/x", "action")
        assert record is not None and len(record.refs) == 4  # refs found in S3
        assert await store.disk.get_record("bazel-ac/x", "action") == record  # and kept on disk
        for digest, data in items:
            assert await store.get_bytes(digest) == data
            assert await store.disk.contains(digest)
        assert await read(await store.get(items[-1][0], 100, 50)) == big[100:150]
        assert store.s3.spool_dir == tmp_path / "cache" / "v1" / "s3-spool"  # large downloads spool on disk
        assert series(store)["store/s3/hit"]["count"] == 5  # the record and four blobs
        gets = counts["GetObject"]
        for digest, data in items:  # now served locally
            assert await store.get_bytes(digest) == data
        assert counts["GetObject"] == gets == 5
        assert series(store)["store/memory/hit"]["count"] >= 3
    finally:
        await store.close()


async def test_corrupt_s3_object_is_a_miss_never_wrong_bytes(store, boto, bucket):
    for size in (5000, 3 << 20):
        data = os.urandom(size)
        digest = Digest.of(data)
        wrong = bytearray(data)
        wrong[-1] ^= 1
        boto.put_object(Bucket=bucket, Key=store.s3.cas_key(digest), Body=zstandard.compress(bytes(wrong)))
        assert await store.find_missing([digest]) == []  # HEAD says present ...
        assert await store.get(digest) is None  # ... the verified read says no
        assert await store.get_bytes(digest) is None
        assert not await store.disk.contains(digest)
        assert store.memory._touch(digest) is None
        await store.put_bytes(digest, data)  # a client re-upload repairs S3
        assert await store.queue.drain(20)
        assert (
            zstandard.decompress(boto.get_object(Bucket=bucket, Key=store.s3.cas_key(digest))["Body"].read())
            == data
        )


async def test_records_with_missing_refs_are_not_served(store):
    (have, have_data), (lost, _) = blobs(2, seed=5)
    await store.put_bytes(have, have_data)
    await store.put_record("ns", "complete", Record(b"ok", (have,)))
    await store.put_record("ns", "dangling", Record(b"no", (have, lost)))
    assert (await store.get_record("ns", "complete")).value == b"ok"
    assert await store.get_record("ns", "dangling") is None
    # A record only in S3 whose blob exists nowhere is not served and not kept locally.
    await store.s3.put_record("ns", "remote", Record(b"r", (lost,)))
    assert await store.get_record("ns", "remote") is None
    assert await store.disk.get_record("ns", "remote") is None


async def test_find_missing_asks_s3_only_for_local_misses(store):
    local = blobs(5, seed=6)
    for digest, data in local:
        await store.put_bytes(digest, data)
    assert await store.queue.drain(20)
    store.s3._exists.clear()
    counts = count_requests(store.s3)
    absent = [d for d, _ in blobs(3, seed=7)]
    query = [d for d, _ in local] + absent
    assert await store.find_missing(query) == absent
    assert counts["HeadObject"] == 3
    # S3-only blobs: the first question HEADs them, the existence cache answers the next ones.
    shutil.rmtree(store.disk.layout.root / "v1" / "cas")
    store.memory._blobs.clear()
    assert await store.find_missing([d for d, _ in local]) == []
    assert counts["HeadObject"] == 3 + 5
    assert await store.find_missing([d for d, _ in local]) == []
    assert counts["HeadObject"] == 8


async def test_resolve_asks_each_tier_in_turn_and_s3_only_for_local_misses(store, s3_proxy):
    [(small, small_data)] = blobs(1, seed=12)
    big_data = os.urandom(3 << 20)
    big = Digest.of(big_data)
    await store.put_bytes(small, small_data)
    await store.put_bytes(big, big_data)
    assert await store.queue.drain(20)
    store.s3._exists.clear()
    counts = count_requests(store.s3)
    assert await store.resolve("sha256", small.hex) == small  # memory
    assert await store.resolve("sha256", big.hex) == big  # disk (too big for memory)
    assert sum(counts.values()) == 0
    shutil.rmtree(store.disk.layout.root / "v1" / "cas")
    store.memory._blobs.clear()
    store.memory._by_hash.clear()
    assert await store.resolve("sha256", small.hex) == small  # S3, then its existence cache
    assert await store.resolve("sha256", small.hex) == small
    assert counts["ListObjectsV2"] == 1
    assert await store.get_bytes(small) == small_data
    s3_proxy.cut()
    assert await store.resolve("sha256", Digest.of(b"elsewhere").hex) is None  # an outage is a miss
    assert store.metrics.snapshot()["counters"]["s3_errors_total"] == 1


async def test_concurrent_s3_reads_share_one_request(store, boto, bucket):
    data = os.urandom(2 << 20)
    digest = Digest.of(data)
    boto.put_object(Bucket=bucket, Key=store.s3.cas_key(digest), Body=zstandard.compress(data))
    counts = count_requests(store.s3)
    results = await asyncio.gather(*(store.get_bytes(digest) for _ in range(10)))
    assert results == [data] * 10
    assert counts["GetObject"] == 1
    assert await store.disk.contains(digest)


async def test_for_tool_view_records_per_tool_metrics(store):
    bazel = store.for_tool("bazel", ("bazel-ac",))
    assert store.for_tool("bazel", ("bazel-ac",)) is bazel
    (digest, data), (absent, _) = blobs(2, seed=8)
    await bazel.put_bytes(digest, data)
    assert await bazel.get_bytes(digest) == data
    assert await bazel.get(absent) is None
    assert await bazel.contains(digest) and await bazel.find_missing([absent]) == [absent]
    assert await bazel.resolve("sha256", digest.hex) == digest
    await bazel.put_record("bazel-ac/i", "k", Record(b"12345", (digest,)))
    assert (await bazel.get_record("bazel-ac/i", "k")).value == b"12345"
    assert await bazel.get_record("bazel-ac/i", "nope") is None
    got = series(store)
    assert got["bazel/all/put"]["count"] == 2 and got["bazel/all/put"]["bytes"] == len(data) + 5
    assert got["bazel/all/hit"]["count"] == 2 and got["bazel/all/hit"]["bytes"] == len(data) + 5
    assert got["bazel/all/miss"]["count"] == 2
    assert got["bazel/disk/put"]["count"] == 2
    assert got["bazel/memory/hit"]["count"] == 1
    assert got["bazel/s3/miss"]["count"] >= 1
    assert "store/all/hit" not in got


async def test_for_tool_view_keeps_to_its_namespaces(store):
    bazel = store.for_tool("bazel", ("bazel-ac",))
    for namespace in ("gradle", "bazel-acx", "bazel", ""):  # a sibling whose name merely starts alike too
        with pytest.raises(ForeignNamespace):
            await bazel.put_record(namespace, "k", Record(b"x"))
        with pytest.raises(ForeignNamespace):
            await bazel.get_record(namespace, "k")
    assert await bazel.get_record("bazel-ac/team/main", "k") is None  # its sub-namespaces are its own
    with pytest.raises(ValueError):
        store.for_tool("bazel", ("gradle",))  # one tool, one declaration


async def test_hard_cap_is_a_clear_error_and_nothing_is_queued(tmp_path, s3_proxy, bucket):
    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket, hard_cap=64 << 10)
    await store.start()
    try:
        data = os.urandom(100 << 10)
        with pytest.raises(StoreFull, match="hard cap"):
            await store.put_bytes(Digest.of(data), data)
        assert store.queue.depth == 0
    finally:
        await store.close()


async def test_memory_only_store_and_bad_composition():
    store = TieredStore(memory=MemoryTier(budget=1 << 20))
    await store.start()
    (digest, data), (absent, _) = blobs(2, seed=9)
    await store.put_bytes(digest, data)
    assert await store.get_bytes(digest) == data
    assert await store.find_missing([absent, digest]) == [absent]
    await store.put_record("ns", "k", Record(b"v", (digest,)))
    assert await store.get_record("ns", "k") == Record(b"v", (digest,))
    assert set(store.stats()) == {"memory", "errors"}
    await store.close()
    with pytest.raises(ValueError, match="upload queue"):
        TieredStore(memory=MemoryTier(), s3=S3Tier(bucket="b"))


async def test_disk_full_still_serves_from_s3(tmp_path, s3_proxy, bucket, boto):
    data = os.urandom(3 << 20)
    digest = Digest.of(data)
    boto.put_object(
        Bucket=bucket,
        Key=f"{PREFIX}/cas/sha256/{digest.hex[:2]}/{digest.hex}.{digest.size}",
        Body=zstandard.compress(data),
    )
    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket, hard_cap=1 << 20)
    await store.start()
    try:
        assert await read(await store.get(digest, 10, 1000)) == data[10:1010]
        assert await store.get_bytes(digest) == data
        assert not await store.disk.contains(digest)
        assert store.stats()["errors"]["local"] >= 1
    finally:
        await store.close()


async def test_hung_s3_does_not_hold_local_requests(tmp_path, s3_proxy, bucket):
    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket, read_timeout=0.3, connect_timeout=0.3)
    await store.start()
    try:
        s3_proxy.stall = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        items = blobs(20, seed=10)
        for digest, data in items:
            await store.put_bytes(digest, data)
            assert await store.get_bytes(digest) == data
        assert loop.time() - started < 5  # local work never waits on the hung S3
        assert await store.get(Digest.of(b"not here")) is None  # a miss asks S3 once, bounded by the timeout
        assert loop.time() - started < 10
        s3_proxy.cut()
        s3_proxy.stall = False
        s3_proxy.restore()
        assert await store.queue.drain(30)
    finally:
        await store.close(drain_timeout=0)


async def test_shutdown_does_not_wait_long_for_a_dead_s3(tmp_path, s3_proxy, bucket):
    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket)
    await store.start()
    s3_proxy.cut()
    for digest, data in blobs(3, seed=11):
        await store.put_bytes(digest, data)
    while store.s3.state != "degraded":
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await store.close(drain_timeout=30)
    assert loop.time() - started < 5
    journal = tmp_path / "cache" / "v1" / "s3-queue"
    assert len([p for p in journal.iterdir() if "." not in p.name]) == 3


async def test_read_at_hard_cap_releases_the_spool(tmp_path, s3_proxy, bucket, boto):
    """The disk refuses a large S3 read at its hard cap before reading a byte: the handle opened for that fill
    must still be released, or the spool's temp file stays open until garbage collection."""
    data = os.urandom(3 << 20)
    digest = Digest.of(data)
    store = make_store(tmp_path, s3_proxy.endpoint_url, bucket, hard_cap=1 << 20)
    boto.put_object(Bucket=bucket, Key=store.s3.cas_key(digest), Body=zstandard.compress(data))
    await store.start()
    entries = []
    real_get = store.s3.get

    async def spy(d, *args, **kw):
        blob = await real_get(d, *args, **kw)
        entries.append(blob._entry)
        return blob

    store.s3.get = spy
    try:
        assert await read(await store.get(digest, 10, 1000)) == data[10:1010]
        (entry,) = entries
        assert entry.refs == 0
        assert entry.task.result().closed
        assert store.stats()["errors"]["local"] == 1
    finally:
        await store.close()
