"""Disk tier benchmark: index reopen time with N entries, and PUT/GET throughput of one large blob.

    python bench/disk_index.py [--entries 100000] [--blob-mib 1024] [--repeat 3] [--dir /path/on/target/fs]

Reopen: the store is filled with N real small blobs (files named by their true digest, written directly so
filling takes seconds, not N fsyncs), opened once without a snapshot (the stat-every-file slow path, which
then writes the snapshot), then reopened `--repeat` times. GET hashes the whole blob while streaming it (every
read is verified); its ceiling, measured in the same run, is one thread hashing the same bytes from memory.
PUT is verified ingest: hash while writing, fsync, rename. Prints medians; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from micd.lifecycle import keep_freed_heap
from micd.store import Digest
from micd.tiers.disk import DiskTier
from micd.tiers.disk.layout import Layout

CHUNK = 1 << 20
BLOCK = 64 << 20


def fill(root: Path, entries: int) -> None:
    layout = Layout(root)
    layout.make_dirs()
    for i in range(entries):
        data = i.to_bytes(8, "big") * 16
        digest = Digest("sha256", hashlib.sha256(data).hexdigest(), len(data))
        with open(layout.blob_path(digest), "wb") as handle:
            handle.write(data)


async def time_open(root: Path) -> tuple[float, int]:
    tier = DiskTier(root, soft_cap=1 << 40, hard_cap=1 << 41)
    start = time.perf_counter()
    await tier.open()
    elapsed = time.perf_counter() - start
    count = tier.entry_count
    await tier.close()
    return elapsed, count


async def bench_reopen(base: Path, entries: int, repeat: int) -> None:
    root = base / "index"
    start = time.perf_counter()
    await asyncio.to_thread(fill, root, entries)
    print(f"filled {entries} blobs in {time.perf_counter() - start:.1f} s")
    slow, count = await time_open(root)
    print(f"open without snapshot (stat each file): {slow:.3f} s, {count} entries")
    times = [(await time_open(root))[0] for _ in range(repeat)]
    print(
        f"reopen with snapshot: median {statistics.median(times):.3f} s over {repeat} (all: "
        + ", ".join(f"{t:.3f}" for t in times)
        + ")"
    )


def big_blob(mib: int) -> tuple[bytes, Digest]:
    block = os.urandom(min(BLOCK, mib << 20))
    hasher = hashlib.sha256()
    size = mib << 20
    for pos in range(0, size, len(block)):
        hasher.update(block[: min(len(block), size - pos)])
    return block, Digest("sha256", hasher.hexdigest(), size)


def raw_write(base: Path, block: bytes, mib: int) -> float:
    path = base / "raw"
    size = mib << 20
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for pos in range(0, size, CHUNK):
            start_in_block = pos % len(block)
            os.write(fd, block[start_in_block : start_in_block + min(CHUNK, size - pos)])
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return size / (time.perf_counter() - start) / 1e9


async def chunks(block: bytes, size: int) -> AsyncIterator[bytes]:
    view = memoryview(block)
    for pos in range(0, size, CHUNK):
        start = pos % len(block)
        yield bytes(view[start : start + min(CHUNK, size - pos)])


async def read_all(tier: DiskTier, digest: Digest) -> float:
    handle = await tier.get(digest)
    assert handle is not None, f"{digest} was just stored"
    start = time.perf_counter()
    total = 0
    async for chunk in handle.chunks():
        total += len(chunk)
    assert total == digest.size
    return time.perf_counter() - start


def hash_only(block: bytes, size: int) -> float:
    """Seconds one thread takes to sha256 `size` bytes from memory: the verified GET's ceiling."""
    hasher = hashlib.sha256()
    view = memoryview(block)
    start = time.perf_counter()
    for pos in range(0, size, CHUNK):
        begin = pos % len(block)
        hasher.update(view[begin : begin + min(CHUNK, size - pos)])
    return time.perf_counter() - start


async def bench_blob(base: Path, mib: int, repeat: int) -> None:
    block, digest = big_blob(mib)
    puts, gets, hashes = [], [], []
    for i in range(repeat):
        root = base / f"blob{i}"
        tier = DiskTier(root, soft_cap=1 << 40, hard_cap=1 << 41)
        await tier.open()
        start = time.perf_counter()
        await tier.put(digest, chunks(block, digest.size))
        puts.append(time.perf_counter() - start)
        gets.append(await read_all(tier, digest))
        hashes.append(hash_only(block, digest.size))
        await tier.close()
        shutil.rmtree(root)
    rows = (("PUT (hash+write+fsync)", puts), ("GET (hashed)", gets), ("sha256 alone", hashes))
    raw = await asyncio.to_thread(raw_write, base, block, mib)
    print(f"{'baseline write+fsync':24s} {mib} MiB: {raw:.2f} GB/s (plain os.write + fsync, same bytes)")
    for name, times in rows:
        med = statistics.median(times)
        print(f"{name:24s} {mib} MiB: median {med:.3f} s = {digest.size / med / 1e9:.2f} GB/s over {repeat}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="parent directory (default: system temp)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mic-disk-bench-", dir=args.dir))
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, dir {base}")
        if args.entries:
            await bench_reopen(base, args.entries, args.repeat)
        if args.blob_mib:
            await bench_blob(base, args.blob_mib, args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    keep_freed_heap()  # as the daemon does: reused read buffers, not fresh memory faulted in per chunk
    asyncio.run(main())
