"""Bit rot in a large blob this daemon already read and verified is never served as a whole, successful
response (issue 10, item 2): every read of a large blob is verified while it streams, the stream fails
before its last byte on a mismatch, and the blob is dropped.

The damage keeps the file's inode, size and mtime (in-place rot, or an edit that restores the mtime): what a
"verified once, then trusted while (inode, size, mtime) is unchanged" rule cannot see.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import grpc
import pytest

from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from mickernel.errors import IntegrityError
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from tests.micd.helpers import blob, drain
from tests.protocols.bazel_support import reapi_server

SIZE = 3 << 20  # several read batches, far above the verify limit (always hashed on read)
TOKEN = "bitrot-token"


def rot(path: Path, position: int) -> None:
    """Flip one bit in place and put the mtime back: inode, size and mtime all unchanged."""
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


@pytest.fixture
async def store(tmp_path):
    """Memory keeps nothing this large, so every read of the blob comes from the disk file."""
    tiered = TieredStore(
        memory=MemoryTier(budget=4 << 20),
        disk=DiskTier(tmp_path / "cache", soft_cap=1 << 30, hard_cap=1 << 30, verify_limit=64 << 10),
        memory_fill_limit=64 << 10,
    )
    await tiered.start()
    yield tiered
    await tiered.close()


async def _stored_and_read_once(store: TieredStore, function: str = "sha256") -> tuple[bytes, Digest, Path]:
    data = blob(SIZE, seed=3)
    digest = Digest.of(data, function)
    await store.put_bytes(digest, data)
    handle = await store.get(digest)
    assert (await drain(handle)) == (data, None)  # read, hashed and found good by this process
    return data, digest, store.disk.layout.blob_path(digest)


@pytest.mark.parametrize("function", ["sha256", "blake3"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
async def test_rot_after_a_verified_read_fails_the_next_read(store, function, where):
    data, digest, path = await _stored_and_read_once(store, function)
    rot(path, {"start": 0, "middle": SIZE // 2, "end": SIZE - 1}[where])
    got, error = await drain(await store.get(digest))
    assert isinstance(error, IntegrityError)
    assert len(got) < len(data)  # never the whole length
    assert store.disk.corruptions == 1
    assert not path.exists() and await store.get(digest) is None  # dropped: the next read is a clean miss
    await store.put_bytes(digest, data)  # and an upload heals it
    assert (await drain(await store.get(digest))) == (data, None)


async def test_rot_fails_a_range_read_outside_the_damage(store):
    """A range that does not cover the damaged byte is still refused: the whole file is hashed."""
    _, digest, path = await _stored_and_read_once(store)
    rot(path, SIZE - 1)
    got, error = await drain(await store.get(digest, 0, 1000))
    assert isinstance(error, IntegrityError) and got == b""


async def test_http_get_of_a_rotted_blob_is_cut_short(store, aiohttp_client, tmp_path):
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    client = await aiohttp_client(
        create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
    )
    data, digest, path = await _stored_and_read_once(store)
    url = f"/cas/{digest.function}/{digest.hex}/{digest.size}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    good = await client.get(url, headers=headers)
    assert good.status == 200 and await good.read() == data
    rot(path, SIZE // 3)
    response = await client.get(url, headers=headers)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # the connection was closed before the last byte: never a complete 200
    assert (await client.get(url, headers=headers)).status == 404


async def test_bytestream_read_of_a_rotted_blob_ends_in_an_error(store):
    _, digest, path = await _stored_and_read_once(store)
    rot(path, SIZE // 3)
    async with reapi_server(store) as reapi:
        got = bytearray()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in reapi.bytestream.Read(
                bs_pb2.ReadRequest(resource_name=f"blobs/{digest.hex}/{digest.size}")
            ):
                got += response.data
        assert caught.value.code() != grpc.StatusCode.OK
        assert len(got) < SIZE
        with pytest.raises(grpc.aio.AioRpcError) as again:
            async for _ in reapi.bytestream.Read(
                bs_pb2.ReadRequest(resource_name=f"blobs/{digest.hex}/{digest.size}")
            ):
                pass
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
