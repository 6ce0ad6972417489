"""ByteStream over gRPC: reads with offsets and bounded chunks, streamed and resumable writes, zstd, BLAKE3,
instance names with `/`, and every failure the spec names."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from micd.app import new_grpc_server
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols import bazel_reapi
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import bytestream_pb2_grpc as bs_grpc
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.bytestream import MAX_READ_CHUNK
from protocols.bazel_reapi.compression import PIECE, compress_bytes, decompress_bytes
from tests.protocols.bazel_support import blob, new_store, pd, reapi_server

CHUNK = 64 << 10


def upload_name(digest: Digest, instance: str = "", uuid: str = "u-1", compressed: bool = False) -> str:
    prefix = f"{instance}/" if instance else ""
    kind = "compressed-blobs/zstd" if compressed else "blobs"
    fn = "blake3/" if digest.function == "blake3" else ""
    return f"{prefix}uploads/{uuid}/{kind}/{fn}{digest.hex}/{digest.size}"


def read_name(digest: Digest, instance: str = "", compressed: bool = False) -> str:
    return upload_name(digest, instance, compressed=compressed).replace("uploads/u-1/", "")


def requests(name: str, data: bytes, *, offset: int = 0, finish: bool = True, chunk: int = CHUNK):
    msgs = []
    for i, start in enumerate(range(0, max(len(data), 1), chunk)):
        piece = data[start : start + chunk]
        msgs.append(
            bs_pb2.WriteRequest(resource_name=name if i == 0 else "", write_offset=offset + start, data=piece)
        )
    msgs[-1].finish_write = finish
    return msgs


async def read_all(env, name: str, offset: int = 0, limit: int = 0) -> tuple[bytes, list[int]]:
    sizes, parts = [], []
    async for resp in env.bytestream.Read(
        bs_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit)
    ):
        sizes.append(len(resp.data))
        parts.append(resp.data)
    return b"".join(parts), sizes


async def expect_code(awaitable, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    assert err.value.code() == code, err.value.details()


async def test_write_then_read_in_chunks_of_at_most_2_mib(env):
    data, digest = blob(5 << 20)
    resp = await env.bytestream.Write(iter(requests(upload_name(digest), data)))
    assert resp.committed_size == digest.size
    got, sizes = await read_all(env, read_name(digest))
    assert got == data and max(sizes) <= MAX_READ_CHUNK and len(sizes) > 1


async def test_read_offset_and_limit(env):
    data, digest = blob(100_000)
    await env.store.put_bytes(digest, data)
    assert (await read_all(env, read_name(digest), offset=1000, limit=500))[0] == data[1000:1500]
    assert (await read_all(env, read_name(digest), offset=99_990))[0] == data[99_990:]
    assert (await read_all(env, read_name(digest), offset=100_000))[0] == b""


async def test_read_failures(env):
    data, digest = blob(1000)
    await env.store.put_bytes(digest, data)
    await expect_code(read_all(env, read_name(digest), offset=1001), grpc.StatusCode.OUT_OF_RANGE)
    await expect_code(read_all(env, read_name(digest), offset=-1), grpc.StatusCode.OUT_OF_RANGE)
    _, missing = blob()
    await expect_code(read_all(env, read_name(missing)), grpc.StatusCode.NOT_FOUND)
    await expect_code(
        read_all(env, read_name(digest, compressed=True), limit=10), grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "blobs",
        "blobs/abc/12",
        "x/blobs/" + "a" * 64,
        "blobs/" + "a" * 64 + "/12x",
        "blobs/" + "a" * 64 + "/-1",
        "a//b/blobs/" + "a" * 64 + "/1",
        "../blobs/" + "a" * 64 + "/1",
        "compressed-blobs/gzip/" + "a" * 64 + "/1",
        "blobs/sha256tree/" + "a" * 64 + "/1",
        "blobs/" + "a" * 64 + "/1/extra",
    ],
)
async def test_malformed_read_names_are_invalid(env, name):
    await expect_code(read_all(env, name), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize(
    "name",
    [
        "blobs/" + "a" * 64 + "/1",
        "uploads/blobs/" + "a" * 64 + "/1",
        "uploads/u/objects/" + "a" * 64 + "/1",
        "uploads/../blobs/" + "a" * 64 + "/1",
    ],
)
async def test_malformed_write_names_are_invalid(env, name):
    await expect_code(
        env.bytestream.Write(iter([bs_pb2.WriteRequest(resource_name=name, finish_write=True)])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_code(
        env.bytestream.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_digest_mismatch_is_invalid_and_stores_nothing(env):
    data, digest = blob(200_000)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    await expect_code(
        env.bytestream.Write(iter(requests(upload_name(digest), bytes(tampered)))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert not await env.store.contains(digest)


@pytest.mark.parametrize("delta", [-1, +1], ids=["short", "long"])
async def test_size_mismatch_is_invalid(env, delta):
    data, digest = blob(1000)
    body = data[:-1] if delta < 0 else data + b"!"
    await expect_code(
        env.bytestream.Write(iter(requests(upload_name(digest), body))), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert not await env.store.contains(digest)


async def test_wrong_write_offset_is_invalid(env):
    data, digest = blob(300_000)
    msgs = requests(upload_name(digest), data)
    msgs[1].write_offset += 7
    await expect_code(env.bytestream.Write(iter(msgs)), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(
        env.bytestream.Write(
            iter(requests(upload_name(digest, uuid="u-2"), data, offset=5, chunk=len(data)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_existing_blob_returns_early_with_full_committed_size(env):
    data, digest = blob(500_000)
    await env.store.put_bytes(digest, data)
    first = requests(upload_name(digest), data)[0]
    first.finish_write = False
    assert (await env.bytestream.Write(iter([first]))).committed_size == digest.size
    compressed = bs_pb2.WriteRequest(resource_name=upload_name(digest, compressed=True), data=b"\x28")
    assert (await env.bytestream.Write(iter([compressed]))).committed_size == -1


async def test_a_write_ended_without_finish_write_keeps_nothing(env):
    """A half-close without finish_write ends the upload: committed_size 0 (the spec allows less than was
    sent), nothing stored, no resume at the old offset; a Write from 0 then stores the blob."""
    data, digest = blob(1 << 20)
    name = upload_name(digest, uuid="half")
    half = len(data) // 2
    assert (await env.bytestream.Write(iter(requests(name, data[:half], finish=False)))).committed_size == 0
    status = await env.bytestream.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (0, False)
    assert not await env.store.contains(digest)
    # one message: a rejected stream should not race the client still sending (grpc reports INTERNAL then)
    resume = requests(name, data[half:], offset=half, chunk=len(data))
    await expect_code(env.bytestream.Write(iter(resume)), grpc.StatusCode.INVALID_ARGUMENT)
    assert (await env.bytestream.Write(iter(requests(name, data)))).committed_size == digest.size
    status = await env.bytestream.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert (status.committed_size, status.complete) == (digest.size, True)
    assert await env.store.get_bytes(digest) == data


def _hanging_write(name: str, data: bytes, sent: asyncio.Event):
    """A Write stream that sends `data` without finish_write, then hangs until the call is cancelled."""

    async def gen():
        for msg in requests(name, data, finish=False):
            yield msg
        sent.set()
        await asyncio.sleep(30)

    return gen()


async def _until(predicate, what: str, timeout: float = 10) -> None:
    """Poll `predicate` (a bound for a loaded machine, not an expectation)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


class ActivePuts:
    """Forwards to the wrapped store and counts the `put` calls in progress (each holds a reservation)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.active = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def put(self, digest, chunks):
        self.active += 1
        try:
            await self._inner.put(digest, chunks)
        finally:
            self.active -= 1


async def test_a_cancelled_write_releases_its_reservation_at_once(tmp_path):
    """A client that goes away mid-Write must not keep disk space reserved: with a 3 MiB hard cap, a second
    2 MiB upload fits as soon as the server has seen the first one cancelled (it was refused StoreFull for
    600 s). Resuming is not offered: QueryWriteStatus reports 0, and the client starts again from there."""
    disk = DiskTier(tmp_path / "cache", soft_cap=3 << 20, hard_cap=3 << 20)
    store = TieredStore(memory=MemoryTier(budget=1 << 20), disk=disk, memory_fill_limit=1 << 20)
    await store.start()
    first, first_digest = blob(2 << 20)
    second, second_digest = blob(2 << 20)
    try:
        async with reapi_server(store) as reapi:
            sent = asyncio.Event()
            name = upload_name(first_digest, uuid="cancelled")
            call = reapi.bytestream.Write(_hanging_write(name, first[: 1 << 20], sent))
            await sent.wait()
            call.cancel()

            async def second_fits() -> bool:
                try:
                    # one message: a refusal must not race the client still sending (grpc says INTERNAL)
                    one = requests(upload_name(second_digest), second, chunk=len(second))
                    await reapi.bytestream.Write(iter(one))
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                    return False
                return True

            await _until(second_fits, "the cancelled upload kept its reservation")
            assert await store.get_bytes(second_digest) == second
            query = bs_pb2.QueryWriteStatusRequest(resource_name=name)
            assert (await reapi.bytestream.QueryWriteStatus(query)).committed_size == 0
            # (the cap makes room for it by evicting the second blob)
            restart = await reapi.bytestream.Write(iter(requests(name, first, chunk=len(first))))
            assert restart.committed_size == first_digest.size
    finally:
        await store.close()


async def test_server_shutdown_ends_an_upload_in_progress():
    """Production never closes an uploads registry: stopping the server must end every store write it
    started (its reservation and temp file go with it)."""
    store = ActivePuts(new_store())
    data, digest = blob(2 << 20)
    sent = asyncio.Event()
    server = new_grpc_server()
    server.add_generic_rpc_handlers(tuple(bazel_reapi.services(store).handlers))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = bs_grpc.ByteStreamStub(channel).Write(
            _hanging_write(upload_name(digest), data[: 1 << 20], sent)
        )
        await sent.wait()

        async def put_started() -> bool:
            return store.active == 1

        await _until(put_started, "the upload never reached the store")
        await server.stop(None)
        call.cancel()

    async def put_ended() -> bool:
        return store.active == 0

    await _until(put_ended, "an upload outlived the server")


async def test_compressed_write_and_read(env):
    data = (b"compressible " * 200_000)[:2_000_000]
    digest = Digest.of(data)
    packed = compress_bytes(data)
    resp = await env.bytestream.Write(iter(requests(upload_name(digest, compressed=True), packed)))
    assert resp.committed_size == len(packed)
    assert await env.store.get_bytes(digest) == data
    got, sizes = await read_all(env, read_name(digest, compressed=True))
    assert decompress_bytes(got, len(data)) == data and max(sizes) <= MAX_READ_CHUNK
    got, _ = await read_all(env, read_name(digest, compressed=True), offset=1_000_000)
    assert decompress_bytes(got, len(data)) == data[1_000_000:]


async def test_compressed_write_failures(env):
    data = b"z" * 100_000
    digest = Digest.of(data)
    wrong = Digest.of(data + b"!")
    await expect_code(
        env.bytestream.Write(iter(requests(upload_name(wrong, compressed=True), compress_bytes(data)))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_code(
        env.bytestream.Write(
            iter(requests(upload_name(digest, uuid="t", compressed=True), compress_bytes(data)[:-4]))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bomb = compress_bytes(b"\0" * (64 << 20))
    await expect_code(
        env.bytestream.Write(iter(requests(upload_name(digest, uuid="b", compressed=True), bomb))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert not await env.store.contains(digest)


async def test_blake3_and_instance_with_slashes(env):
    data, digest = blob(70_000, "blake3")
    name = upload_name(digest, instance="main/inst")
    assert "main/inst/uploads/u-1/blobs/blake3/" in name
    assert (await env.bytestream.Write(iter(requests(name, data)))).committed_size == digest.size
    assert await env.store.contains(digest)
    assert (await read_all(env, read_name(digest, instance="main/inst")))[0] == data
    assert (await read_all(env, read_name(digest, instance="other")))[0] == data  # the CAS is shared


async def test_empty_blob(env):
    empty = Digest.empty()
    assert (await env.bytestream.Write(iter(requests(upload_name(empty), b"")))).committed_size == 0
    assert (await read_all(env, read_name(empty)))[0] == b""


class FirstChunkSignal:
    """Wraps a store; `first_chunk` is set when a put() has received its first chunk."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.first_chunk = asyncio.Event()
        self.chunks = 0
        self.largest = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def put(self, digest, chunks):
        async def watched():
            async for chunk in chunks:
                self.chunks += 1
                self.largest = max(self.largest, len(chunk))
                self.first_chunk.set()
                yield chunk

        await self._inner.put(digest, watched())


async def test_writes_stream_into_the_store_before_the_upload_ends():
    """The store sees bytes while the client is still sending: no whole-blob buffering in the servicer."""
    store = FirstChunkSignal(new_store())
    data, digest = blob(4 << 20)
    msgs = requests(upload_name(digest), data)

    async def gen():
        yield msgs[0]
        await asyncio.wait_for(store.first_chunk.wait(), 10)  # times out if the server buffers everything
        for msg in msgs[1:]:
            yield msg

    async with reapi_server(store) as reapi:
        assert (await reapi.bytestream.Write(gen())).committed_size == digest.size
    assert store.chunks == len(msgs)
    assert await store.get_bytes(digest) == data


async def test_single_message_writes(env):
    """The one-message fast path checks digest and size like the streamed path."""
    data, digest = blob(3000)
    one = requests(upload_name(digest, uuid="one"), data, chunk=len(data))
    assert len(one) == 1
    assert (await env.bytestream.Write(iter(one))).committed_size == digest.size
    assert await env.store.get_bytes(digest) == data
    other, odigest = blob(3000)
    bad = requests(upload_name(odigest, uuid="bad"), data, chunk=len(data))
    await expect_code(env.bytestream.Write(iter(bad)), grpc.StatusCode.INVALID_ARGUMENT)
    packed = compress_bytes(other)
    zone = requests(upload_name(odigest, uuid="z", compressed=True), packed, chunk=len(packed))
    assert (await env.bytestream.Write(iter(zone))).committed_size == len(packed)
    assert await env.store.get_bytes(odigest) == other


async def test_blob_found_corrupt_mid_read_is_unavailable_then_not_found(tmp_path):
    """Bit rot in a large stored blob is detected while streaming: the status must let Bazel retry (the
    request was fine), and the retry is a clean miss because the corrupt file was removed."""
    data, digest = blob(6 << 20)

    def disk_store() -> TieredStore:
        disk = DiskTier(tmp_path / "cache", soft_cap=1 << 30, hard_cap=1 << 31, verify_limit=1 << 20)
        return TieredStore(memory=MemoryTier(budget=1 << 20), disk=disk, memory_fill_limit=1 << 20)

    store = disk_store()
    await store.start()
    await store.put_bytes(digest, data)
    path = store.disk.layout.blob_path(digest)
    await store.close()
    rotten = bytearray(data)
    rotten[-10] ^= 0xFF  # same size, one byte flipped near the end: only the hash can tell
    path.write_bytes(rotten)
    store = disk_store()  # a new process: the file is not trusted, so it is verified while streamed
    await store.start()
    try:
        async with reapi_server(store) as reapi:
            await expect_code(read_all(reapi, read_name(digest)), grpc.StatusCode.UNAVAILABLE)
            await expect_code(read_all(reapi, read_name(digest)), grpc.StatusCode.NOT_FOUND)
    finally:
        await store.close()


async def test_a_small_compressed_message_of_a_big_blob_streams_into_the_store():
    """64 MiB of zeros compress to a few KiB, one message: it is decoded piece by piece into an upload (not
    into one 64 MiB buffer), and verified like any other write."""
    data = bytes(64 << 20)
    digest = Digest.of(data)
    packed = compress_bytes(data)
    assert len(packed) < 64 << 10
    store = FirstChunkSignal(new_store())
    async with reapi_server(store) as reapi:
        name = upload_name(digest, uuid="zeros", compressed=True)
        resp = await reapi.bytestream.Write(iter(requests(name, packed, chunk=len(packed))))
        assert resp.committed_size == len(packed)
        assert 0 < store.largest <= PIECE
        blob = await store.get(digest)
        assert blob is not None and blob.length == digest.size
        await blob.aclose()
        wrong = Digest(digest.function, Digest.of(b"other").hex, digest.size)
        name = upload_name(wrong, uuid="wrong", compressed=True)
        write = reapi.bytestream.Write(iter(requests(name, packed, chunk=len(packed))))
        await expect_code(write, grpc.StatusCode.INVALID_ARGUMENT)
        assert not await store.contains(wrong)


class _CountingS3:
    """A remote tier that holds nothing and counts the existence questions it is asked."""

    state = "ok"

    def __init__(self) -> None:
        self.asked: list[Digest] = []

    def known(self, digest: Digest) -> bool:
        return False

    async def find_missing(self, digests):
        digests = list(digests)
        self.asked += digests
        return digests


class _NoQueue:
    depth = 0

    async def submit(self, key: str) -> None:
        pass


async def test_an_upload_after_find_missing_asks_s3_once():
    """Bazel's upload is FindMissingBlobs, then a Write per missing blob: the Write's early-return check
    looks at the local tiers only, so each new blob costs one S3 existence request, not two."""
    s3 = _CountingS3()
    store = TieredStore(memory=MemoryTier(), s3=s3, queue=_NoQueue())
    data, digest = blob(3000)
    async with reapi_server(store) as reapi:
        request = re_pb2.FindMissingBlobsRequest(blob_digests=[pd(digest)])
        assert len((await reapi.cas.FindMissingBlobs(request)).missing_blob_digests) == 1
        write = await reapi.bytestream.Write(iter(requests(upload_name(digest), data)))
        assert write.committed_size == digest.size
        again = await reapi.bytestream.Write(iter(requests(upload_name(digest, uuid="u-2"), data)))
        assert again.committed_size == digest.size  # held locally now: early return, S3 not asked
    assert s3.asked == [digest]
