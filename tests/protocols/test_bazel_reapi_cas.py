"""Capabilities, CAS (FindMissing, Batch*, GetTree) and auth over a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import grpc
import pytest

from micd.store import Digest
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.cas import TREE_PAGE_BYTES
from protocols.bazel_reapi.common import MAX_BATCH_TOTAL_SIZE
from protocols.bazel_reapi.compression import compress_bytes
from tests.protocols.bazel_support import blob, new_store, pd, reapi_server, worst_loop_delay

GET_TREE = "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree"
OK, INVALID, NOT_FOUND = 0, grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]


async def test_capabilities_advertise_what_bazel_checks(env):
    caps = await env.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="main/inst"))
    cache = caps.cache_capabilities
    assert (caps.low_api_version.major, caps.low_api_version.minor) == (2, 0)
    assert (caps.high_api_version.major, caps.high_api_version.minor) == (2, 3)
    assert list(cache.digest_functions) == [re_pb2.DigestFunction.SHA256, re_pb2.DigestFunction.BLAKE3]
    assert cache.action_cache_update_capabilities.update_enabled
    assert list(cache.supported_compressors) == [re_pb2.Compressor.ZSTD]
    assert list(cache.supported_batch_update_compressors) == [re_pb2.Compressor.ZSTD]
    assert cache.max_batch_total_size_bytes == MAX_BATCH_TOTAL_SIZE


async def test_reserved_instance_segment_is_invalid(env):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name="a/blobs/b"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_find_missing_reports_absent_never_empty(env):
    present, d1 = blob()
    _, d2 = blob()
    await env.store.put_bytes(d1, present)
    req = re_pb2.FindMissingBlobsRequest(blob_digests=[pd(d1), pd(d2), pd(Digest.empty())])
    resp = await env.cas.FindMissingBlobs(req)
    assert [d.hash for d in resp.missing_blob_digests] == [d2.hex]


class NoBodyReads:
    """Forwards everything to the wrapped store but fails the test on any body read."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def get(self, *args, **kwargs):
        raise AssertionError("FindMissingBlobs read a body")

    get_bytes = get


async def test_find_missing_never_reads_bodies():
    store = new_store()
    data, digest = blob()
    await store.put_bytes(digest, data)
    _, absent = blob()
    async with reapi_server(NoBodyReads(store)) as reapi:
        req = re_pb2.FindMissingBlobsRequest(blob_digests=[pd(digest)] * 999 + [pd(absent)])
        resp = await reapi.cas.FindMissingBlobs(req)
    assert [d.hash for d in resp.missing_blob_digests] == [absent.hex]


@pytest.mark.parametrize(
    "bad",
    [
        re_pb2.Digest(hash="zz" * 32, size_bytes=1),
        re_pb2.Digest(hash="ab" * 32, size_bytes=-1),
        re_pb2.Digest(hash="AB" * 32, size_bytes=1),
        re_pb2.Digest(hash="ab", size_bytes=1),
    ],
    ids=["not-hex", "negative-size", "uppercase", "short"],
)
async def test_find_missing_rejects_malformed_digests(env, bad):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[bad]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("function", [re_pb2.DigestFunction.MD5, 99], ids=["md5", "unnamed-number"])
async def test_unsupported_digest_function_is_invalid(env, function):
    req = re_pb2.FindMissingBlobsRequest(digest_function=function)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.cas.FindMissingBlobs(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported digest function" in err.value.details()


async def test_unknown_compressor_is_a_per_blob_invalid_argument(env):
    """proto3 accepts enum numbers it has no name for: one such entry fails alone, not the whole batch."""
    data, digest = blob(100)
    other, dother = blob(101)
    response = await env.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(digest), data=data, compressor=42),
                re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(dother), data=other),
            ]
        )
    )
    codes = [entry.status.code for entry in response.responses]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.OK.value[0]]
    assert "42" in response.responses[0].status.message


async def test_batch_update_then_read_with_per_blob_status(env):
    good, dgood = blob(4096)
    _, dbad = blob(10)
    short, dshort = blob(10)
    _, dmissing = blob()
    req = re_pb2.BatchUpdateBlobsRequest(
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(dgood), data=good),
            re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(dbad), data=b"x" * 10),  # digest mismatch
            re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(dshort), data=short[:5]),  # wrong size
            re_pb2.BatchUpdateBlobsRequest.Request(
                digest=pd(dgood), data=good, compressor=re_pb2.Compressor.BROTLI
            ),
        ]
    )
    resp = await env.cas.BatchUpdateBlobs(req)
    assert [r.status.code for r in resp.responses] == [OK, INVALID, INVALID, INVALID]
    assert await env.store.find_missing([dgood, dbad, dshort]) == [dbad, dshort]
    read = await env.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[pd(dgood), pd(dmissing)]))
    assert [r.status.code for r in read.responses] == [OK, NOT_FOUND]
    assert read.responses[0].data == good and read.responses[1].data == b""


async def test_batch_update_accepts_zstd_and_checks_the_uncompressed_digest(env):
    data = b"abc" * 5000
    digest = Digest.of(data)
    ok = re_pb2.BatchUpdateBlobsRequest.Request(
        digest=pd(digest), data=compress_bytes(data), compressor=re_pb2.Compressor.ZSTD
    )
    wrong = re_pb2.BatchUpdateBlobsRequest.Request(
        digest=pd(Digest.of(data + b"!")), data=compress_bytes(data), compressor=re_pb2.Compressor.ZSTD
    )
    garbage = re_pb2.BatchUpdateBlobsRequest.Request(
        digest=pd(digest), data=b"not zstd", compressor=re_pb2.Compressor.ZSTD
    )
    resp = await env.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[ok, wrong, garbage]))
    assert [r.status.code for r in resp.responses] == [OK, INVALID, INVALID]
    assert await env.store.get_bytes(digest) == data


async def test_oversized_batches_are_rejected_whole(env):
    data, digest = blob(MAX_BATCH_TOTAL_SIZE // 2 + 1)
    entry = re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(digest), data=data)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[entry, entry]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await env.store.find_missing([digest]) == [digest]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[pd(digest)] * 2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_compressed_batch_entries_count_at_their_announced_size(env):
    """A few KiB of zstd may announce (and decode to) gigabytes: the batch limit applies to what the entries
    decode to as well as to what they carry, so a batch never decodes more than the limit into memory."""
    data = bytes(MAX_BATCH_TOTAL_SIZE + 1)
    digest = Digest.of(data)
    entry = re_pb2.BatchUpdateBlobsRequest.Request(
        digest=pd(digest), data=compress_bytes(data), compressor=re_pb2.Compressor.ZSTD
    )
    assert len(entry.data) < 4096
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[entry]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not await env.store.contains(digest)


async def test_blake3_batch_roundtrip(env):
    data, digest = blob(300, "blake3")
    fn = re_pb2.DigestFunction.BLAKE3
    req = re_pb2.BatchUpdateBlobsRequest(
        digest_function=fn, requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(digest), data=data)]
    )
    assert (await env.cas.BatchUpdateBlobs(req)).responses[0].status.code == OK
    assert await env.store.contains(digest)
    sha_view = Digest("sha256", digest.hex, digest.size)
    assert not await env.store.contains(sha_view)
    read = await env.cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(digest_function=fn, digests=[pd(digest)])
    )
    assert read.responses[0].data == data


async def _put_directory(store, directory: re_pb2.Directory) -> Digest:
    data = directory.SerializeToString()
    digest = Digest.of(data)
    await store.put_bytes(digest, data)
    return digest


async def _tree(store) -> tuple[Digest, int]:
    """root → a, b; a → c; b → c (shared); c → files only. 4 distinct directories."""
    _, file_digest = blob(5)
    c = await _put_directory(
        store, re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=pd(file_digest))])
    )
    a = await _put_directory(
        store, re_pb2.Directory(directories=[re_pb2.DirectoryNode(name="c", digest=pd(c))])
    )
    b = await _put_directory(
        store,
        re_pb2.Directory(
            directories=[re_pb2.DirectoryNode(name="c", digest=pd(c))], files=[re_pb2.FileNode(name="g")]
        ),
    )
    root = await _put_directory(
        store,
        re_pb2.Directory(
            directories=[
                re_pb2.DirectoryNode(name="a", digest=pd(a)),
                re_pb2.DirectoryNode(name="b", digest=pd(b)),
            ]
        ),
    )
    return root, 4


async def test_get_tree_streams_pages_and_resumes_from_a_token(env):
    root, count = await _tree(env.store)
    pages = [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(root), page_size=3))]
    assert [len(p.directories) for p in pages] == [3, 1]
    assert pages[0].next_page_token and pages[-1].next_page_token == ""
    resumed = [
        p
        async for p in env.cas.GetTree(
            re_pb2.GetTreeRequest(root_digest=pd(root), page_size=3, page_token=pages[0].next_page_token)
        )
    ]
    assert [list(p.directories) for p in resumed] == [list(pages[1].directories)]
    whole = [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(root)))]
    assert len(whole) == 1 and len(whole[0].directories) == count


async def test_get_tree_pages_stay_under_the_message_limit(env):
    """300 directories of 200 files each are ~6.5 MiB of Directory messages: one 1000-directory page would
    exceed gRPC's 4 MiB default, so pages also close at TREE_PAGE_BYTES; a token resumes at the right place."""
    _, file_digest = blob(10)
    children = []
    for i in range(300):
        names = [f"dir{i:04d}_file_with_a_longish_name_{j:04d}.o" for j in range(200)]
        directory = re_pb2.Directory(files=[re_pb2.FileNode(name=n, digest=pd(file_digest)) for n in names])
        children.append(
            re_pb2.DirectoryNode(name=f"d{i:03d}", digest=pd(await _put_directory(env.store, directory)))
        )
    root = await _put_directory(env.store, re_pb2.Directory(directories=children))
    pages = [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(root)))]
    assert len(pages) > 1 and all(p.ByteSize() <= TREE_PAGE_BYTES for p in pages)
    assert sum(len(p.directories) for p in pages) == 301
    resumed = [
        p
        async for p in env.cas.GetTree(
            re_pb2.GetTreeRequest(root_digest=pd(root), page_token=pages[0].next_page_token)
        )
    ]
    assert [list(p.directories) for p in resumed] == [list(p.directories) for p in pages[1:]]


async def test_get_tree_failures(env):
    _, missing = blob()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(missing)))]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    root, _ = await _tree(env.store)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(root), page_token="x1"))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    not_a_dir, digest = b"\xff\xff\xff", Digest.of(b"\xff\xff\xff")
    await env.store.put_bytes(digest, not_a_dir)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [p async for p in env.cas.GetTree(re_pb2.GetTreeRequest(root_digest=pd(digest)))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_huge_get_tree_keeps_the_event_loop_responsive(env):
    """60,000 subdirectories under one root (a 4.8 MB root Directory): the walk fetches and parses in bounded
    batches off the event loop, so every other call keeps being served. The whole tree used to be fetched
    and parsed on the loop: a 1-2 s stall here over the memory tier, 31 s over the disk tier."""
    children = []
    for i in range(60_000):
        digest = await _put_directory(env.store, re_pb2.Directory(files=[re_pb2.FileNode(name=f"f{i}")]))
        children.append(re_pb2.DirectoryNode(name=f"d{i:05d}", digest=pd(digest)))
    root = await _put_directory(env.store, re_pb2.Directory(directories=children))
    # Pages stay bytes on the client: its own parsing is not what is measured.
    get_tree = env.channel.unary_stream(GET_TREE, request_serializer=re_pb2.GetTreeRequest.SerializeToString)

    async def call():
        return [p async for p in get_tree(re_pb2.GetTreeRequest(root_digest=pd(root)))]

    pages, worst = await worst_loop_delay(call())
    assert sum(len(re_pb2.GetTreeResponse.FromString(p).directories) for p in pages) == 60_001
    assert worst < 0.5, f"the event loop stalled for {worst:.2f} s"  # a bound for a loaded 2-core machine


def _find_missing_150k() -> tuple[str, bytes]:
    digests = [re_pb2.Digest(hash=f"{i:064x}", size_bytes=i + 1) for i in range(150_000)]
    return "FindMissingBlobs", re_pb2.FindMissingBlobsRequest(blob_digests=digests).SerializeToString()


def _batch_read_100k() -> tuple[str, bytes]:
    digests = [pd(Digest.empty())] * 100_000  # empty blobs weigh nothing against the batch limit
    return "BatchReadBlobs", re_pb2.BatchReadBlobsRequest(digests=digests).SerializeToString()


def _batch_update_20k() -> tuple[str, bytes]:
    entries = []
    for i in range(20_000):
        data = i.to_bytes(4, "big") * 25
        entries.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=pd(Digest.of(data)), data=data))
    return "BatchUpdateBlobs", re_pb2.BatchUpdateBlobsRequest(requests=entries).SerializeToString()


@pytest.mark.parametrize("build", [_find_missing_150k, _batch_read_100k, _batch_update_20k])
async def test_a_huge_batch_keeps_the_event_loop_responsive(build):
    """Requests as large as micd's 32 MiB message limit allows: converting their digests and entries takes
    about a second of Python, which runs off the event loop or in chunks that let other calls in."""
    method, request = build()
    async with reapi_server(new_store()) as reapi:
        call = reapi.channel.unary_unary(
            f"/build.bazel.remote.execution.v2.ContentAddressableStorage/{method}"
        )
        _, worst = await worst_loop_delay(call(request))
    assert worst < 0.6, f"{method}: the event loop stalled for {worst:.2f} s"  # old code: 0.9-1.5 s


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),)], ids=["missing", "wrong"])
async def test_token_is_required_on_every_service(metadata):
    store = new_store()
    _, digest = blob()
    async with reapi_server(store, token="s3cret") as reapi:
        calls = [
            reapi.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(), metadata=metadata),
            reapi.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(), metadata=metadata),
            reapi.ac.GetActionResult(
                re_pb2.GetActionResultRequest(action_digest=pd(digest)), metadata=metadata
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await reapi.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[pd(digest)]),
            metadata=(("authorization", "Bearer s3cret"),),
        )
        assert len(ok.missing_blob_digests) == 1
