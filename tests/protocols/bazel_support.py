"""Helpers for the Bazel protocol tests: the store to run over, an in-process REAPI gRPC server, blobs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc

from micd.app import GRPC_OPTIONS, new_grpc_server
from micd.auth import TokenInterceptor
from micd.store import Digest
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols import bazel_reapi
from protocols.bazel_reapi._proto import bytestream_pb2_grpc as bs_grpc
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2_grpc as re_grpc

T = TypeVar("T")


# micd's own server (micd/app.py) takes messages up to 32 MiB: big enough for 100,000 digests in one request.
async def worst_loop_delay(call: Awaitable[T]) -> tuple[T, float]:
    """Await `call` while a ticker on the same event loop records its worst delay between 5 ms ticks."""
    worst, running = 0.0, True

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    task = asyncio.create_task(ticker())
    try:
        result = await call
    finally:
        running = False
        await task
    return result, worst


def new_store() -> TieredStore:
    """The composed store (it enforces "a record is served only if every referenced blob exists")."""
    return TieredStore(memory=MemoryTier())


def blob(size: int = 100, function: str = "sha256") -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, Digest.of(data, function)


def pd(digest: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=digest.hex, size_bytes=digest.size)


@dataclass
class Reapi:
    channel: grpc.aio.Channel
    capabilities: re_grpc.CapabilitiesStub
    cas: re_grpc.ContentAddressableStorageStub
    ac: re_grpc.ActionCacheStub
    bytestream: bs_grpc.ByteStreamStub
    port: int


@asynccontextmanager
async def reapi_server(
    store, *, token: str | None = None
) -> AsyncIterator[Reapi]:
    """Serve `store` over REAPI on 127.0.0.1:<ephemeral>, with the daemon's message limits (client too);
    with `token`, behind micd's TokenInterceptor."""
    interceptors = [TokenInterceptor(token)] if token else []
    server = new_grpc_server(interceptors)
    server.add_generic_rpc_handlers(tuple(bazel_reapi.services(store).handlers))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        yield Reapi(
            channel,
            re_grpc.CapabilitiesStub(channel),
            re_grpc.ContentAddressableStorageStub(channel),
            re_grpc.ActionCacheStub(channel),
            bs_grpc.ByteStreamStub(channel),
            port,
        )
    finally:
        await channel.close()
        await server.stop(None)
