"""Shared set-up of the tool-cache protocol tests (Nx, Turborepo): the daemon's app (auth middleware included)
over a memory + disk store, a raw-socket client for requests no HTTP library sends, and blob corruption."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from micd.app import Activity, create_app
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore

TOKEN = "tool-cache-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HARD_CAP = 64 << 20


@asynccontextmanager
async def daemon_client(aiohttp_client: Any, tmp_path: Path):
    """The test client of the daemon's app; `client.store` is its TieredStore (disk hard cap `HARD_CAP`)."""
    store = TieredStore(
        memory=MemoryTier(budget=16 << 20),
        disk=DiskTier(tmp_path / "cache", soft_cap=HARD_CAP, hard_cap=HARD_CAP, verify_limit=1 << 20),
    )
    await store.start()
    try:
        config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
        app = create_app(store, config, token=TOKEN, metrics=Metrics(), activity=Activity())
        client = await aiohttp_client(app)
        client.store = store
        yield client
    finally:
        await store.close(drain_timeout=0)


async def raw_request(client: Any, head: str, body: bytes = b"", *, hang_up: bool = True) -> bytes:
    """Send `head` (request line and header lines, no final blank line) and `body` as they are, then (with
    `hang_up`) close our sending side; returns the first response's status line (b"" if none came)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        if hang_up:
            writer.write_eof()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def corrupt(store: TieredStore, digest: Digest) -> None:
    """Flip one byte of the blob's disk file and drop it from memory, so the next read meets the damage."""
    path = store.disk.layout.blob_path(digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    store.memory._blobs.pop(digest, None)
