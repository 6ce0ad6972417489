"""What this machine charges for the two kernel costs that bound micd's remaining benchmark rows.

    python bench/machine_costs.py [--dir DIR]

1. Reading a 64 MiB file from the page cache in 1 MiB `pread`s (8 MiB batches in a worker thread, as
   `micd.tiers.disk.blob` does), in a fresh interpreter with glibc's default malloc settings and with the
   daemon's `keep_freed_heap()`: the gap is freed buffers being faulted in again.
2. Storing 4 KiB blobs as one file each (create, write, close; three rounds of 3,000, as the kernel's caches
   warm up) versus appending them to one file with one `fdatasync` per 64 (what a pack file would cost).
3. Writing 1 GiB and fsyncing it three ways: into a new file (the page cache takes fresh memory, as every
   PUT of a new blob does), over the same file again (the page cache reuses its pages), and with `O_DIRECT`
   from one reused buffer (no page cache). The gap between the first two is what the kernel charges for
   fresh memory; on a VM whose freed memory goes back to the host (virtio-balloon free page reporting), it
   is most of a large PUT's cost. Then reading it back with `O_DIRECT` and, cold, through the page cache.

Prints medians; bounded (under a minute); writes only under --dir (default: a temp dir), removed at the end.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READ_SCRIPT = """
import os, sys, time
from concurrent.futures import ThreadPoolExecutor
if sys.argv[2] == "tuned":
    from micd.lifecycle import keep_freed_heap
    assert keep_freed_heap()
fd = os.open(sys.argv[1], os.O_RDONLY)
pool = ThreadPoolExecutor(1)
def batch(pos):
    return [os.pread(fd, 1 << 20, p) for p in range(pos, pos + (8 << 20), 1 << 20)]
times = []
for _ in range(7):
    start = time.perf_counter()
    for pos in range(0, 64 << 20, 8 << 20):
        pool.submit(batch, pos).result()
    times.append(time.perf_counter() - start)
print(sorted(times)[3])
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_costs(work: Path) -> None:
    path = work / "blob-64MiB"
    path.write_bytes(os.urandom(64 << 20))
    for mode in ("default", "tuned"):
        out = subprocess.run(
            [sys.executable, "-c", READ_SCRIPT, str(path), mode], capture_output=True, text=True, check=True,
            cwd=REPO,
        )  # fmt: skip
        print(f"64 MiB page-cache read, malloc {mode:<8}: median {float(out.stdout) * 1000:6.1f} ms")


def file_costs(work: Path) -> None:
    shards = work / "shards"
    for shard in range(256):
        (shards / f"{shard:02x}").mkdir(parents=True)
    data = os.urandom(4096)
    for round_ in range(3):
        start = cpu()
        for i in range(3000):
            fd = os.open(
                shards / f"{i % 256:02x}" / f"r{round_}-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            os.write(fd, data)
            os.close(fd)
        print(
            f"one file per 4 KiB blob, round {round_ + 1}: {(cpu() - start) / 3000 * 1e6:6.1f} µs CPU per blob"
        )
    fd = os.open(work / "pack", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    per_blob = []
    for _ in range(3):
        start = cpu()
        for _ in range(3000 // 64):
            os.write(fd, data * 64)
            os.fdatasync(fd)
        per_blob.append((cpu() - start) / (3000 // 64 * 64) * 1e6)
    os.close(fd)
    print(f"append 64 blobs + one fdatasync (pack): {statistics.median(per_blob):6.1f} µs CPU per blob")


def write_costs(work: Path, mib: int) -> None:
    block = os.urandom(16 << 20)
    aligned = mmap.mmap(-1, len(block))  # page-aligned, as O_DIRECT needs
    aligned[:] = block

    def write(path: Path, flags: int, source: bytes | mmap.mmap) -> tuple[float, float]:
        start_cpu, start = cpu(), time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
        try:
            for index in range(mib // 16):
                os.pwrite(fd, source, index * len(block))
            os.fsync(fd)
        finally:
            os.close(fd)
        return (mib << 20) / (time.perf_counter() - start) / 1e6, cpu() - start_cpu

    def read(path: Path, flags: int) -> float:
        start = time.perf_counter()
        fd = os.open(path, os.O_RDONLY | flags)
        try:
            for index in range(mib // 16):
                os.preadv(fd, [aligned], index * len(block))
        finally:
            os.close(fd)
        return (mib << 20) / (time.perf_counter() - start) / 1e6

    def report(label: str, runs: list[tuple[float, float]]) -> None:
        speed = statistics.median(r[0] for r in runs)
        seconds = statistics.median(r[1] for r in runs)
        print(f"write {mib} MiB + fsync, {label:<24}: median {speed:5.0f} MB/s, {seconds:4.2f} CPU-s")

    # Files are kept until the end: freeing one would hand the next write memory that was just in use.
    files = [work / f"new-{index}" for index in range(3)]
    report("new file (fresh memory)", [write(path, 0, block) for path in files])
    report("same file again", [write(files[-1], 0, block) for _ in range(3)])
    direct_files = [work / f"direct-{index}" for index in range(3)]
    try:
        direct = [write(path, os.O_DIRECT, aligned) for path in direct_files]
    except OSError as exc:  # e.g. tmpfs on older kernels
        print(f"O_DIRECT not available on this filesystem: {exc}")
        return
    report("O_DIRECT", direct)
    direct_reads = [read(path, os.O_DIRECT) for path in direct_files]
    cold_reads = [read(path, 0) for path in direct_files]
    print(
        f"read {mib} MiB back: O_DIRECT median {statistics.median(direct_reads):5.0f} MB/s; cold through the "
        f"page cache {statistics.median(cold_reads):5.0f} MB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temp dir on the default temp filesystem)")
    parser.add_argument("--write-mib", type=int, default=1024, help="size of the write measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="machine-costs-", dir=args.dir))
    try:
        read_costs(work)
        file_costs(work)
        write_costs(work, args.write_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
