"""A digest of size 0 names the empty blob only with the empty blob's hash (issue 10, item 1).

(H, 0) with H not the hash of b"" names nothing that can exist: uploading it is refused, so every read path
must refuse or miss it too, never answer an empty hit. Driven through the daemon's HTTP app, the REAPI gRPC
servicers and the composed store, over memory alone and over memory + disk.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest, Record
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.action_result import action_key
from protocols.bazel_reapi.common import ac_namespace
from tests.protocols.bazel_support import pd, reapi_server

TOKEN = "size-zero-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ABC = hashlib.sha256(b"abc").hexdigest()
LYING = Digest("sha256", ABC, 0)
EMPTY = Digest.empty()


@pytest.fixture(params=["memory", "disk"])
async def store(request, tmp_path):
    disk = (
        DiskTier(tmp_path / "cache", soft_cap=1 << 30, hard_cap=1 << 30) if request.param == "disk" else None
    )
    tiered = TieredStore(memory=MemoryTier(), disk=disk)
    await tiered.start()
    yield tiered
    await tiered.close()


@pytest.fixture
async def http(aiohttp_client, store, tmp_path):
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    return await aiohttp_client(
        create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
    )


def test_only_the_empty_hash_is_empty():
    assert EMPTY.is_empty and Digest.empty("blake3").is_empty
    assert not LYING.is_empty
    assert not Digest("blake3", EMPTY.hex, 0).is_empty  # sha256's empty hash is not blake3's


async def test_the_store_misses_a_lying_size_zero_digest(store):
    assert await store.find_missing([LYING, EMPTY]) == [LYING]
    assert not await store.contains(LYING)
    assert not await store.contains_locally(LYING)
    assert await store.get(LYING) is None
    assert await store.get_bytes(LYING) is None
    assert await store.get_many_bytes([LYING, EMPTY]) == [None, b""]
    assert await store.contains(EMPTY)


async def test_a_record_referencing_a_lying_size_zero_digest_is_a_miss(store):
    """A record stored before the fix (its ref was never checked against the hash) must not become a hit."""
    await store.put_record("bazel-ac/main", "k", Record(b"v", (LYING,)))
    assert await store.get_record("bazel-ac/main", "k") is None
    await store.put_record("bazel-ac/main", "e", Record(b"v", (EMPTY,)))
    assert await store.get_record("bazel-ac/main", "e") is not None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_generic_cas_refuses_a_lying_size_zero_digest(http, method):
    response = await http.request(method, f"/cas/sha256/{ABC}/0", headers=AUTH)
    assert response.status == 400
    ok = await http.request(method, f"/cas/sha256/{EMPTY.hex}/0", headers=AUTH)
    assert ok.status == 200 and await ok.read() == b""


async def test_generic_cas_put_of_a_lying_size_zero_digest_is_refused(http):
    assert (await http.put(f"/cas/sha256/{ABC}/0", data=b"", headers=AUTH)).status == 400


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_bazel_http_cas_refuses_a_lying_size_zero_digest(http, method):
    headers = {**AUTH, "X-Digest-SizeBytes": "0"}
    assert (await http.request(method, f"/bazel/cas/{ABC}", headers=headers)).status == 400
    assert (await http.request(method, f"/bazel/inst/cas/{ABC}", headers=headers)).status == 400
    assert (await http.request(method, f"/bazel/cas/{ABC}", headers=AUTH)).status == 404  # not stored: a miss
    ok = await http.request(method, f"/bazel/cas/{EMPTY.hex}", headers=headers)
    assert ok.status == 200


async def _stored_lying_result(store) -> tuple[re_pb2.ActionResult, Digest]:
    """An action cache entry whose output is (H, 0), as stored before the fix (its ref never checked)."""
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=pd(LYING))])
    action = Digest.of(b"action")
    record = Record(result.SerializeToString(), (LYING,))
    await store.put_record(ac_namespace(""), action_key(action.function, action.hex), record)
    return result, action


async def test_bazel_http_ac_hit_needs_real_blobs(http, store):
    result, action = await _stored_lying_result(store)
    assert (await http.get(f"/bazel/ac/{action.hex}", headers=AUTH)).status == 404
    put = await http.put(f"/bazel/ac/{Digest.of(b'other').hex}", data=result.SerializeToString(), headers=AUTH)
    assert put.status == 400


@pytest.fixture
async def reapi(store):
    async with reapi_server(store) as server:
        yield server


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_reapi_refuses_a_lying_size_zero_digest(reapi):
    cas, lying = reapi.cas, pd(LYING)
    assert await _code(cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[lying]))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    read = await _batch_read_code(cas, lying)
    assert read == grpc.StatusCode.INVALID_ARGUMENT
    stream = reapi.bytestream.Read(bs_pb2.ReadRequest(resource_name=f"blobs/{ABC}/0"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = await cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[pd(EMPTY)]))
    assert list(found.missing_blob_digests) == []


async def _batch_read_code(cas, digest: re_pb2.Digest) -> grpc.StatusCode:
    """The status of one digest in a BatchReadBlobs call: per blob if the call succeeds, else the call's."""
    try:
        response = await cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[digest]))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    (item,) = response.responses
    return grpc.StatusCode.OK if item.status.code == 0 else _grpc_code(item.status.code)


def _grpc_code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


async def test_reapi_action_result_with_a_lying_size_zero_output_is_no_hit(reapi, store):
    result, action = await _stored_lying_result(store)
    get = reapi.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=pd(action)))
    assert await _code(get) == grpc.StatusCode.NOT_FOUND
    update = reapi.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=pd(Digest.of(b"other")), action_result=result)
    )
    assert await _code(update) == grpc.StatusCode.INVALID_ARGUMENT
