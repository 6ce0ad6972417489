"""Bit rot in a large blob this daemon already read and verified is never served as a whole, successful
response (issue 10, item 2): every read of a large blob is verified while it streams, the stream fails
before its last byte on a mismatch, and the blob is dropped. That holds for both ways out of the disk tier:
`chunks()` (gRPC ByteStream) and `send_verified` (HTTP, by sendfile).

The damage keeps the file's inode, size and mtime (in-place rot, or an edit that restores the mtime): what a
"verified once, then trusted while (inode, size, mtime) is unchanged" rule cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest, SendfileBlob
from micd.tiers.disk import DiskTier
from micd.tiers.disk import blob as disk_blob
from micd.tiers.disk.blob import _BATCH, FileBlob
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from mickernel.errors import IntegrityError
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from tests.micd.helpers import blob, drain, wait_until
from tests.protocols.bazel_support import reapi_server

SIZE = 3 << 20  # several read batches, far above the verify limit (always hashed on read)
BIG = 2 * _BATCH + 12345  # several hash batches and sendfile calls, then the withheld last MiB
TAIL = 1 << 20  # what `send_verified` sends only once the digest matched
TOKEN = "bitrot-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


async def _stored_and_read_once(
    store: TieredStore, function: str = "sha256", size: int = SIZE
) -> tuple[bytes, Digest, Path]:
    data = blob(size, seed=3)
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


def _app(store: TieredStore, tmp_path: Path, activity: Activity | None = None) -> web.Application:
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    return create_app(store, config, token=TOKEN, metrics=Metrics(), activity=activity or Activity())


def _url(digest: Digest) -> str:
    return f"/cas/{digest.function}/{digest.hex}/{digest.size}"


async def test_http_get_of_a_rotted_blob_is_cut_short(store, aiohttp_client, tmp_path):
    client = await aiohttp_client(_app(store, tmp_path))
    data, digest, path = await _stored_and_read_once(store)
    good = await client.get(_url(digest), headers=AUTH)
    assert good.status == 200 and await good.read() == data
    rot(path, SIZE // 3)
    response = await client.get(_url(digest), headers=AUTH)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # the connection was closed before the last byte: never a complete 200
    assert (await client.get(_url(digest), headers=AUTH)).status == 404


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


def _watch_hashing(monkeypatch: pytest.MonkeyPatch, seen: Callable[[int], None]) -> None:
    """Call `seen(position)` in the hashing thread each time FileBlob reports a batch hashed (it hashes the
    file in order from byte 0, so all below `position` is hashed), before the report goes on."""
    hash_file = FileBlob._hash_file

    def watched(blob: FileBlob, start: int, end: int, hashed: Callable[[int], None] | None = None) -> None:
        def report(position: int) -> None:
            seen(position)
            if hashed is not None:
                hashed(position)

        hash_file(blob, start, end, report)

    monkeypatch.setattr(FileBlob, "_hash_file", watched)


class _Receiver:
    """A fake receiver of `send_verified` (the `SendfileBlob` contract): what came by `send_file` and what by
    `write`, checking that `send_file` is asked for contiguous bytes only once the hash has read them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
        self.next = offset
        self.sent = bytearray()
        self.sendfile_calls = 0
        self.written = bytearray()
        self.hashed = 0
        _watch_hashing(monkeypatch, self._hashed)

    def _hashed(self, position: int) -> None:
        self.hashed = max(self.hashed, position)

    async def send_file(self, file, offset: int, count: int) -> int:
        assert offset == self.next and offset + count <= self.hashed, (offset, count, self.hashed)
        assert not self.written, "the withheld tail went out before a later part"
        self.sent += os.pread(file.fileno(), count, offset)
        self.next += count
        self.sendfile_calls += 1
        return count

    async def write(self, data: bytes) -> None:
        self.written += data


@pytest.mark.parametrize(
    ("offset", "limit"),
    [(0, None), (_BATCH - 10, _BATCH + 20 + TAIL), (BIG - TAIL - 7, None), (100, 1000)],
    ids=["whole", "spanning-batches", "just-over-the-tail", "within-the-tail"],
)
async def test_send_verified_sends_hashed_bytes_and_the_tail_last(store, monkeypatch, offset, limit):
    data, digest, _ = await _stored_and_read_once(store, size=BIG)
    handle = await store.get(digest, offset, limit)
    assert isinstance(handle, SendfileBlob)  # what the HTTP frontends send by sendfile
    receiver = _Receiver(monkeypatch, offset)
    try:
        await handle.send_verified(receiver.send_file, receiver.write)
    finally:
        await handle.aclose()
    expected = data[offset : offset + handle.length]
    assert bytes(receiver.sent + receiver.written) == expected
    assert len(receiver.written) == min(len(expected), TAIL)
    assert (receiver.sendfile_calls > 0) == (len(expected) > TAIL)


@pytest.mark.parametrize("function", ["sha256", "blake3"])
@pytest.mark.parametrize(
    ("position", "limit"),
    [(0, None), (_BATCH + 5, None), (BIG - 1, None), (BIG - 1, 3 * TAIL)],
    ids=["first-sendfile", "later-sendfile", "in-the-tail", "outside-the-range"],
)
async def test_send_verified_of_a_rotted_blob_withholds_the_tail(
    store, monkeypatch, function, position, limit
):
    """The regression test of the sendfile path's verification: without it, this rot goes out complete."""
    _, digest, path = await _stored_and_read_once(store, function, size=BIG)
    rot(path, position)
    handle = await store.get(digest, 0, limit)
    receiver = _Receiver(monkeypatch, 0)
    try:
        with pytest.raises(IntegrityError):
            await handle.send_verified(receiver.send_file, receiver.write)
    finally:
        await handle.aclose()
    assert receiver.written == b"" and len(receiver.sent) <= handle.length - TAIL
    assert store.disk.corruptions == 1
    assert not path.exists() and await store.get(digest) is None


def _count_sendfile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of the event loop's sendfile calls from now on."""
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    sendfile = loop.sendfile

    async def counted(transport, file, offset=0, count=None, **options):
        calls.append(count)
        return await sendfile(transport, file, offset, count, **options)

    monkeypatch.setattr(loop, "sendfile", counted)
    return calls


@pytest.mark.parametrize(
    ("position", "byte_range"),
    [(0, None), (_BATCH + 5, None), (BIG - 1, None), (BIG - 1, f"bytes=0-{3 * TAIL - 1}")],
    ids=["first-sendfile", "later-sendfile", "in-the-tail", "range-away-from-it"],
)
async def test_http_get_by_sendfile_of_a_rotted_blob_is_cut_short(
    store, aiohttp_client, tmp_path, monkeypatch, position, byte_range
):
    client = await aiohttp_client(_app(store, tmp_path))
    data, digest, path = await _stored_and_read_once(store, size=BIG)
    headers = {**AUTH, **({"Range": byte_range} if byte_range else {})}
    sendfile_calls = _count_sendfile(monkeypatch)
    good = await client.get(_url(digest), headers=headers)
    body = await good.read()
    assert good.status == (206 if byte_range else 200) and body == data[: len(body)]
    assert len(body) == (3 * TAIL if byte_range else BIG)
    assert sendfile_calls and sum(sendfile_calls) == len(body) - TAIL  # all but the tail went by sendfile
    sendfile_calls.clear()
    rot(path, position)
    response = await client.get(_url(digest), headers=headers)
    assert response.status == (206 if byte_range else 200)  # the headers went out before the damage was seen
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # cut short: never a complete response
    assert sendfile_calls
    assert store.disk.corruptions == 1
    assert (await client.get(_url(digest), headers=AUTH)).status == 404


@pytest.mark.parametrize("hashing", ["slow", "fast"])
async def test_a_client_gone_mid_send_leaves_nothing_behind(store, tmp_path, monkeypatch, caplog, hashing):
    """No fd, no hashing thread and no error left behind; a disconnect is no corruption. With a slow hash the
    client goes between two sends and the hash must stop early; with a fast one it goes while a sendfile call
    is blocked on its full socket. Served as the daemon serves (aiohttp's test server cancels handlers on a
    disconnect; the daemon lets them run on)."""
    hashed: list[int] = []

    def seen(position: int) -> None:
        if hashing == "slow":
            time.sleep(0.02)
        hashed.append(position)

    _, digest, path = await _stored_and_read_once(store, size=BIG)
    if hashing == "slow":
        monkeypatch.setattr(disk_blob, "_BATCH", 1 << 20)  # many batches: many chances to stop
    # else 8 MiB batches: the first send alone is more than both sockets' buffers hold
    _watch_hashing(monkeypatch, seen)
    failed_sends = _failed_sendfiles(monkeypatch)
    activity = Activity()
    runner = web.AppRunner(_app(store, tmp_path, activity), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        fds_before = len(os.listdir("/proc/self/fd"))
        with caplog.at_level(logging.DEBUG):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # the sends stall early
            client.setblocking(False)
            await asyncio.get_running_loop().sock_connect(client, runner.addresses[0][:2])
            reader, writer = await asyncio.open_connection(sock=client)
            head = "".join(f"{name}: {value}\r\n" for name, value in AUTH.items())
            writer.write(f"GET {_url(digest)} HTTP/1.1\r\nHost: micd\r\n{head}\r\n".encode())
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            if hashing == "fast":  # read no more until the server's sends stall on the full socket
                await wait_until(lambda: max(hashed, default=0) >= BIG - TAIL)
                await asyncio.sleep(0.1)
            writer.close()
            await wait_until(lambda: activity.in_flight == 0)
        await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)
    finally:
        await runner.cleanup()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("disconnected" in r.getMessage() for r in caplog.records if r.name == "micd.access")
    if hashing == "slow":
        hashed_then = max(hashed)
        assert hashed_then < BIG // 2  # the hash stopped with the send, not at the end of the file
        await asyncio.sleep(0.1)
        assert max(hashed) == hashed_then
    else:
        assert failed_sends and all(isinstance(exc, ConnectionError) for exc in failed_sends)
    assert store.disk.corruptions == 0 and path.exists()


def _failed_sendfiles(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """The errors the event loop's sendfile calls raise from now on."""
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    sendfile = loop.sendfile

    async def watched(*args, **options):
        try:
            return await sendfile(*args, **options)
        except BaseException as exc:
            errors.append(exc)
            raise

    monkeypatch.setattr(loop, "sendfile", watched)
    return errors
