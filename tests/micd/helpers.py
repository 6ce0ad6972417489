"""Builders shared by the micd tier tests: deterministic blobs, chunked bodies, S3 request counting."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from micd.store import Digest
from micd.tiers.disk import DiskTier
from mickernel.errors import IntegrityError

FAST_FAILING_S3: dict[str, Any] = {
    "max_attempts": 1,
    "connect_timeout": 2,
    "read_timeout": 5,
    "cooldown": (0.05, 0.2),
}
"""S3Tier options for tests: one attempt, short timeouts and cool-downs, so outage tests finish quickly."""


def blob(size: int, seed: int = 0) -> bytes:
    """`size` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), size):
        yield data[pos : pos + size]


async def read(handle: Any) -> bytes:
    """The whole body of an open blob handle."""
    return b"".join([chunk async for chunk in handle.chunks()])


async def drain(handle: Any) -> tuple[bytes, BaseException | None]:
    """What an open blob handle streamed, and the IntegrityError that cut it short (None if it completed)."""
    got = bytearray()
    try:
        async for chunk in handle.chunks():
            got += chunk
    except IntegrityError as exc:
        return bytes(got), exc
    return bytes(got), None


def temp_files(tier: DiskTier) -> list[Path]:
    """The disk tier's leftover temp files (its lock file and journal segments aside)."""
    return [p for p in tier.layout.tmp.rglob("*") if p.is_file() and p.name != "lock" and p.parent.name != "journal"]


def s3_keys(boto: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in boto.list_objects_v2(Bucket=bucket).get("Contents", []))


def count_requests(s3_tier: Any) -> Counter:
    """Count HTTP requests per S3 operation (every attempt, as botocore sends it)."""
    counts: Counter = Counter()

    def on_send(event_name: str, **_: object) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    s3_tier._client.meta.events.register("before-send.s3", on_send)
    return counts


async def start_held_put(tier: DiskTier, data: bytes, release: asyncio.Event, head: int = 100) -> asyncio.Task:
    """Start a streamed put of `data` that sends `head` bytes, then waits for `release`; return its task once
    the tier holds the upload's reservation (bounded: 10 s)."""

    async def held() -> AsyncIterator[bytes]:
        yield data[:head]
        await release.wait()
        yield data[head:]

    task = asyncio.create_task(tier.put(Digest.of(data), held()))
    for _ in range(1000):
        if tier.stats()["reserved_bytes"] >= len(data):
            break
        await asyncio.sleep(0.01)
    assert tier.stats()["reserved_bytes"] >= len(data)
    return task


async def wait_until(condition, timeout: float = 10) -> None:
    """Poll `condition` on the event loop until it holds; fail after `timeout` seconds (a loaded CI machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
