"""What this machine charges for the two kernel costs that bound micd's remaining benchmark rows.

    python bench/machine_costs.py [--dir DIR]

1. Reading a 64 MiB file from the page cache in 1 MiB `pread`s (8 MiB batches in a worker thread, as
   `micd.tiers.disk.blob` does), in a fresh interpreter with glibc's default malloc settings and with the
   daemon's `keep_freed_heap()`: the gap is freed buffers being faulted in again.
2. Storing 4 KiB blobs as one file each (create, write, close; three rounds of 3,000, as the kernel's caches
   warm up) versus appending them to one file with one `fdatasync` per 64 (what a pack file would cost).

Prints medians; bounded (a few seconds); writes only under --dir (default: a temp dir), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temp dir on the default temp filesystem)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="machine-costs-", dir=args.dir))
    try:
        read_costs(work)
        file_costs(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
