"""An ActionResult referencing more than 65,535 blobs (a node_modules-sized output directory) is stored and
served, over gRPC and Bazel's HTTP cache; one over the record bound is refused as the client's error
(issue 10, item 5: the record format packed the ref count in 16 bits, so such a result was a 500 / UNKNOWN).
"""

from __future__ import annotations

import grpc
import pytest

from micd import record as record_module
from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from tests.protocols.bazel_support import pd, reapi_server

TOKEN = "large-result-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILES = 70_000


@pytest.fixture
async def store(tmp_path):
    """Memory + disk: the disk tier is where records are encoded (the memory tier keeps Record objects)."""
    tiered = TieredStore(
        memory=MemoryTier(), disk=DiskTier(tmp_path / "cache", soft_cap=1 << 32, hard_cap=1 << 32)
    )
    await tiered.start()
    yield tiered
    await tiered.close()


async def _output_tree(store: TieredStore, files: int) -> Digest:
    """Store `files` distinct small blobs and a Tree listing them all; return the Tree's digest."""
    root = re_pb2.Directory()
    for i in range(files):
        data = b"file %d" % i
        digest = Digest.of(data)
        await store.memory.put_bytes(digest, data)  # memory only: 70k disk files would cost minutes here
        root.files.add(name=f"f{i}", digest=pd(digest))
    tree = re_pb2.Tree(root=root).SerializeToString()
    tree_digest = Digest.of(tree)
    await store.put_bytes(tree_digest, tree)
    return tree_digest


def _result(tree: Digest) -> re_pb2.ActionResult:
    return re_pb2.ActionResult(
        output_directories=[re_pb2.OutputDirectory(path="node_modules", tree_digest=pd(tree))]
    )


async def test_grpc_result_with_70k_outputs_is_a_hit(store):
    result = _result(await _output_tree(store, FILES))
    action = Digest.of(b"npm install")
    async with reapi_server(store) as reapi:
        await reapi.ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=pd(action), action_result=result)
        )
        got = await reapi.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=pd(action)))
    assert got == result


async def test_http_result_with_70k_outputs_is_a_hit(store, aiohttp_client, tmp_path):
    body = _result(await _output_tree(store, FILES)).SerializeToString()
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    http = await aiohttp_client(
        create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
    )
    action = Digest.of(b"npm ci").hex
    assert (await http.put(f"/bazel/ac/{action}", data=body, headers=AUTH)).status == 200
    got = await http.get(f"/bazel/ac/{action}", headers=AUTH)
    assert got.status == 200 and await got.read() == body


async def test_a_result_over_the_record_bound_is_the_clients_error(
    store, aiohttp_client, tmp_path, monkeypatch
):
    monkeypatch.setattr(record_module, "MAX_REFS", 10)
    result = _result(await _output_tree(store, 11))
    async with reapi_server(store) as reapi:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reapi.ac.UpdateActionResult(
                re_pb2.UpdateActionResultRequest(action_digest=pd(Digest.of(b"a")), action_result=result)
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10 blobs" in caught.value.details()
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    http = await aiohttp_client(
        create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
    )
    put = await http.put(f"/bazel/ac/{Digest.of(b'b').hex}", data=result.SerializeToString(), headers=AUTH)
    assert put.status == 400 and "at most 10 blobs" in await put.text()
