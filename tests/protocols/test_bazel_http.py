"""Bazel's HTTP cache through the daemon's app (auth middleware included), with the aiohttp test client."""

from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter

import pytest

from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest, Record
from protocols.bazel_http import MAX_AC_BODY
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.action_result import action_key
from protocols.bazel_reapi.common import ac_namespace
from protocols.bazel_reapi.compression import compress_bytes, decompress_bytes
from tests.protocols.bazel_support import blob, new_store, pd, reapi_server
from tests.protocols.test_cas_http import _put_expecting_continue

TOKEN = "a>>>?tok"  # base64 of "u:<token>" differs between the standard and URL-safe alphabets
STD = {"Authorization": "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()}
URLSAFE = {"Authorization": "Basic " + base64.urlsafe_b64encode(f"u:{TOKEN}".encode()).decode().rstrip("=")}
assert STD != URLSAFE


@pytest.fixture
async def env(aiohttp_client, tmp_path):
    store = new_store()
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    app = create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
    client = await aiohttp_client(app)
    client.store = store
    return client


def _blob(size: int = 1000) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def _result(*outputs: tuple[bytes, str]) -> bytes:
    files = [
        re_pb2.OutputFile(path=f"out/{i}", digest=re_pb2.Digest(hash=h, size_bytes=len(d)))
        for i, (d, h) in enumerate(outputs)
    ]
    return re_pb2.ActionResult(output_files=files, exit_code=0).SerializeToString()


async def test_cas_put_get_head_with_both_basic_alphabets(env):
    data, hex_ = _blob()
    resp = await env.put(f"/bazel/cas/{hex_}", data=data, headers=STD)
    assert resp.status == 200
    resp = await env.get(f"/bazel/cas/{hex_}", headers={**URLSAFE, "Accept-Encoding": "gzip"})  # as Bazel sends
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Length"] == str(len(data)) and resp.version == (1, 1)
    resp = await env.head(f"/bazel/cas/{hex_}", headers=STD)
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"u:nope").decode()},
        {"Authorization": "Bearer nope"},
    ],
    ids=["missing", "wrong-basic", "wrong-bearer"],
)
async def test_token_required(env, headers):
    data, hex_ = _blob()
    for method, path in (
        ("PUT", f"/bazel/cas/{hex_}"),
        ("GET", f"/bazel/cas/{hex_}"),
        ("PUT", f"/bazel/ac/{hex_}"),
        ("GET", f"/bazel/main/inst/ac/{hex_}"),
        ("HEAD", f"/bazel/ac/{hex_}"),
    ):
        resp = await env.request(method, path, data=data if method == "PUT" else None, headers=headers)
        assert resp.status == 401, (method, path)
    assert not await env.store.contains(Digest("sha256", hex_, len(data)))


async def test_cas_misses_and_digest_mismatch(env):
    data, hex_ = _blob()
    assert (await env.get(f"/bazel/cas/{hex_}", headers=STD)).status == 404
    resp = await env.put(f"/bazel/cas/{hex_}", data=data + b"!", headers=STD)
    assert resp.status == 400 and len(await resp.read()) < 10_000
    assert not await env.store.contains(Digest("sha256", hex_, len(data)))
    assert not await env.store.contains(Digest("sha256", hex_, len(data) + 1))
    assert (await env.get(f"/bazel/cas/{hex_}", headers=STD)).status == 404


@pytest.mark.parametrize(
    "path", ["/bazel/cas/XYZ", "/bazel/ac/" + "A" * 64, "/bazel/cas/" + "a" * 63, "/bazel/a/blobs/ac/" + "a" * 64]
)
async def test_malformed_paths_are_400(env, path):
    assert (await env.put(path, data=b"x", headers=STD)).status == 400
    assert (await env.get(path, headers=STD)).status == 400


async def test_ac_rejects_non_action_results(env):
    _, key = _blob()
    resp = await env.put(f"/bazel/ac/{key}", data=b"\xff\xff\xff", headers=STD)
    assert resp.status == 400
    assert (await env.get(f"/bazel/ac/{key}", headers=STD)).status == 404


async def test_ac_hit_only_when_referenced_blobs_exist(env):
    out, out_hex = _blob()
    _, key = _blob()
    body = _result((out, out_hex))
    assert (await env.put(f"/bazel/ac/{key}", data=body, headers=STD)).status == 200
    assert (await env.get(f"/bazel/ac/{key}", headers=STD)).status == 404  # out is not in the CAS yet
    assert (await env.put(f"/bazel/cas/{out_hex}", data=out, headers=STD)).status == 200
    resp = await env.get(f"/bazel/ac/{key}", headers=STD)
    assert resp.status == 200 and await resp.read() == body


async def test_ac_hit_only_when_the_files_inside_output_directories_exist(env):
    """Files of an output directory are named only in its Tree: the result must not be a hit while one of them
    is missing (Bazel would fail fetching it), and a result whose Tree is not in the CAS is refused."""
    inner, inner_hex = _blob()
    tree = re_pb2.Tree(
        root=re_pb2.Directory(
            files=[re_pb2.FileNode(name="f", digest=pd(Digest("sha256", inner_hex, len(inner))))]
        )
    )
    tree_bytes = tree.SerializeToString()
    tree_hex = hashlib.sha256(tree_bytes).hexdigest()
    result = re_pb2.ActionResult(
        output_directories=[
            re_pb2.OutputDirectory(
                path="out/d", tree_digest=re_pb2.Digest(hash=tree_hex, size_bytes=len(tree_bytes))
            )
        ]
    ).SerializeToString()
    _, key = _blob()
    resp = await env.put(f"/bazel/ac/{key}", data=result, headers=STD)
    assert resp.status == 400 and "Tree" in await resp.text()  # the Tree is not uploaded yet
    assert (await env.put(f"/bazel/cas/{tree_hex}", data=tree_bytes, headers=STD)).status == 200
    assert (await env.put(f"/bazel/ac/{key}", data=result, headers=STD)).status == 200
    assert (await env.get(f"/bazel/ac/{key}", headers=STD)).status == 404  # the file inside is not in the CAS
    assert (await env.put(f"/bazel/cas/{inner_hex}", data=inner, headers=STD)).status == 200
    assert (await env.get(f"/bazel/ac/{key}", headers=STD)).status == 200


async def test_instance_prefix_is_its_own_namespace_shared_with_grpc(env):
    out, out_hex = _blob()
    _, key = _blob()
    await env.put(f"/bazel/cas/{out_hex}", data=out, headers=STD)
    body = _result((out, out_hex))
    assert (await env.put(f"/bazel/main/inst/ac/{key}", data=body, headers=STD)).status == 200
    assert (await env.get(f"/bazel/main/inst/ac/{key}", headers=STD)).status == 200
    assert (await env.get(f"/bazel/ac/{key}", headers=STD)).status == 404
    assert (await env.get(f"/bazel/main/ac/{key}", headers=STD)).status == 404
    record = await env.store.get_record(ac_namespace("main/inst"), action_key("sha256", key))
    assert record is not None and record.value == body
    # the CAS is shared: the blob is reachable under any prefix
    assert await (await env.get(f"/bazel/main/inst/cas/{out_hex}", headers=STD)).read() == out


@pytest.mark.parametrize("instance", ["cas/x", "cas/sha256", "ac/cas"])
async def test_an_instance_that_looks_like_the_generic_cas_route_is_still_bazels(env, instance):
    """`/cas/<x>/cas/<hex>` has the generic CAS endpoint's four segments: it must reach Bazel's cache."""
    data, hex_ = _blob()
    assert (await env.put(f"/bazel/{instance}/cas/{hex_}", data=data, headers=STD)).status == 200
    assert await (await env.get(f"/bazel/{instance}/cas/{hex_}", headers=STD)).read() == data
    _, key = _blob()
    body = _result((data, hex_))
    assert (await env.put(f"/bazel/{instance}/ac/{key}", data=body, headers=STD)).status == 200
    assert await (await env.get(f"/bazel/{instance}/ac/{key}", headers=STD)).read() == body
    # and the generic endpoint still answers a malformed digest with a 400, not a 404
    assert (await env.get(f"/cas/sha256/{hex_[:10]}/{len(data)}", headers=STD)).status == 400


async def test_blobs_uploaded_over_grpc_or_the_generic_endpoint_are_hits_by_hash_alone(env):
    """`/cas/<hex>` finds a blob however it was uploaded, though Bazel's HTTP routes never saw its size (with
    the size index this was a 404 until an HTTP action cache hit named the blob)."""
    by_grpc, grpc_digest = blob(3000)
    async with reapi_server(env.store.for_tool("bazel", ("bazel-ac",))) as reapi:
        name = f"uploads/u-1/blobs/{grpc_digest.hex}/{grpc_digest.size}"
        write = bs_pb2.WriteRequest(resource_name=name, data=by_grpc, finish_write=True)
        assert (await reapi.bytestream.Write(iter([write]))).committed_size == len(by_grpc)
    generic, generic_hex = _blob(5000)
    generic_path = f"/cas/sha256/{generic_hex}/{len(generic)}"
    assert (await env.put(generic_path, data=generic, headers=STD)).status == 201
    for data, hex_ in ((by_grpc, grpc_digest.hex), (generic, generic_hex)):
        resp = await env.get(f"/bazel/cas/{hex_}", headers=STD)
        assert resp.status == 200 and await resp.read() == data
        resp = await env.head(f"/bazel/cas/{hex_}", headers=STD)
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
        announced = {**STD, "X-Digest-SizeBytes": str(len(data))}
        assert await (await env.get(f"/bazel/cas/{hex_}", headers=announced)).read() == data
        wrong = {**STD, "X-Digest-SizeBytes": str(len(data) + 1)}  # a wrong size is a miss, never a hit
        assert (await env.get(f"/bazel/cas/{hex_}", headers=wrong)).status == 404
        assert (await env.head(f"/bazel/cas/{hex_}", headers=wrong)).status == 404
    _, key = _blob()
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="o", digest=pd(grpc_digest))])
    body = result.SerializeToString()
    await env.store.put_record("bazel-ac", f"sha256:{key}", Record(body, (grpc_digest,)))
    assert await (await env.get(f"/bazel/ac/{key}", headers=STD)).read() == body


@pytest.fixture
def writes(env, monkeypatch) -> Counter:
    """Calls of the store's write methods: every tool's writes go through them."""
    counts: Counter = Counter()

    def counting(name: str):
        write = getattr(env.store, name)

        async def counted(*args, **kwargs):
            counts[name] += 1
            return await write(*args, **kwargs)

        return counted

    for name in ("put", "put_bytes", "put_record"):
        monkeypatch.setattr(env.store, name, counting(name))
    return counts


async def test_reads_write_nothing(env, writes):
    """An action cache hit and the CAS reads that follow store nothing (the size index wrote one record per
    output on every HTTP action cache hit: 70 ms for 50 outputs, and an S3 upload each)."""
    outputs = [_blob(100 + i) for i in range(5)]
    for data, hex_ in outputs:
        assert (await env.put(f"/bazel/cas/{hex_}", data=data, headers=STD)).status == 200
    _, key = _blob()
    assert (await env.put(f"/bazel/main/ac/{key}", data=_result(*outputs), headers=STD)).status == 200
    assert writes["put"] == 5 and writes["put_record"] >= 1  # control: the count sees the uploads
    writes.clear()
    reads = [("GET", f"/bazel/main/ac/{key}", STD), ("HEAD", f"/bazel/main/ac/{key}", STD)]
    reads.append(("GET", f"/bazel/main/ac/{key}", {**STD, "Accept-Encoding": "zstd"}))
    for data, hex_ in outputs:
        reads += [("GET", f"/bazel/main/cas/{hex_}", STD), ("HEAD", f"/bazel/cas/{hex_}", STD)]
        reads.append(("GET", f"/bazel/cas/{hex_}", {**STD, "X-Digest-SizeBytes": str(len(data))}))
    for method, path, headers in reads:
        assert (await env.request(method, path, headers=headers)).status == 200, (method, path)
    assert (await env.get(f"/bazel/ac/{_blob()[1]}", headers=STD)).status == 404
    assert (await env.get(f"/bazel/cas/{_blob()[1]}", headers=STD)).status == 404
    assert sum(writes.values()) == 0


async def test_zstd_encodings(env):
    data = b"squeeze me " * 10_000
    hex_ = hashlib.sha256(data).hexdigest()
    packed = compress_bytes(data)
    zstd = {**STD, "Content-Encoding": "zstd"}
    assert (await env.put(f"/bazel/cas/{hex_}", data=packed, headers=zstd)).status == 400  # no X-Digest-SizeBytes
    resp = await env.put(f"/bazel/cas/{hex_}", data=packed, headers={**zstd, "X-Digest-SizeBytes": str(len(data))})
    assert resp.status == 200
    resp = await env.get(f"/bazel/cas/{hex_}", headers={**STD, "Accept-Encoding": "zstd"}, auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "zstd"
    assert decompress_bytes(await resp.read(), len(data)) == data
    for plain in ("gzip", "zstd;q=0", "gzip, zstd; q=0.0", "zstdx", "zstd;q=bad"):
        resp = await env.get(f"/bazel/cas/{hex_}", headers={**STD, "Accept-Encoding": plain}, auto_decompress=False)
        assert "Content-Encoding" not in resp.headers and await resp.read() == data, plain
    for wanted in ("br, ZSTD", "zstd;q=0.5", "gzip;q=1, zstd"):
        resp = await env.get(
            f"/bazel/cas/{hex_}", headers={**STD, "Accept-Encoding": wanted}, auto_decompress=False
        )
        assert resp.headers.get("Content-Encoding") == "zstd", wanted
    bad = {**zstd, "X-Digest-SizeBytes": str(len(data))}
    _, other = _blob()
    assert (await env.put(f"/bazel/cas/{other}", data=b"not zstd at all", headers=bad)).status == 400
    assert not await env.store.contains(Digest("sha256", other, len(data)))
    _, key = _blob()
    body = _result((data, hex_))
    assert (await env.put(f"/bazel/ac/{key}", data=compress_bytes(body), headers=zstd)).status == 200
    resp = await env.get(f"/bazel/ac/{key}", headers={**STD, "Accept-Encoding": "zstd"}, auto_decompress=False)
    assert decompress_bytes(await resp.read(), 1 << 20) == body
    assert (
        await env.put(f"/bazel/ac/{key}", data=body, headers={**STD, "Content-Encoding": "x-foo"})
    ).status == 400


async def test_existing_blob_put_is_accepted_again(env):
    data, hex_ = _blob(300_000)
    for _ in range(2):  # Bazel's HTTP client re-PUTs every blob on every build
        assert (await env.put(f"/bazel/cas/{hex_}", data=data, headers=STD)).status == 200
    assert await (await env.get(f"/bazel/cas/{hex_}", headers=STD)).read() == data


@pytest.mark.parametrize(
    ("kind", "headers"),
    [
        ("ac", {"Content-Length": str(MAX_AC_BODY + 1)}),
        ("cas", {"Content-Length": "100", "X-Digest-SizeBytes": "99"}),
        ("cas", {"Transfer-Encoding": "chunked"}),  # no size to check the blob against
    ],
)
async def test_expect_continue_refusals_come_before_100(env, kind, headers):
    statuses = await _put_expecting_continue(env, f"/bazel/{kind}/{'a' * 64}", {**STD, **headers})
    assert statuses[0].startswith(b"HTTP/1.1 400 ")


async def test_expect_continue_upload(env):
    data, hex_ = _blob(100_000)
    headers = {**STD, "Content-Length": str(len(data))}
    statuses = await _put_expecting_continue(env, f"/bazel/cas/{hex_}", headers, data)
    assert [line.split(b" ")[1] for line in statuses] == [b"100", b"200"]
    assert (await env.get(f"/bazel/cas/{hex_}", headers=STD)).status == 200
