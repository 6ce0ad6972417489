"""Benchmark of the storage core over the generic HTTP CAS endpoint (issue 2), one real `micd` per config.

    python bench/cas_bench.py                 # all tiers, 3 repetitions, prints a table of medians
    python bench/cas_bench.py --quick         # fewer ops and a 256 MiB "large" blob, for a smoke run
    python bench/cas_bench.py --tiers memory,disk --reps 5

Measured, per tier, with 1 and 32 concurrent clients (one keep-alive connection each):
- 4 KiB PUT and GET: ops/s, p50 and p99 latency. Every PUT is a new blob (the daemon hashes, stores it).
  memory = GETs of blobs already filled into the memory tier; disk = memory tier off (`--memory-budget 0`);
  s3 = PUT with S3 configured (write-behind) and cold GETs read through from S3 (moto server) after the
  disk tier was wiped.
- a large blob (1 GiB; sha256 and blake3): PUT MB/s (verified ingest: hashed while written to disk, fsync,
  rename) and GET MB/s (sendfile from the disk tier while a worker thread hashes the file; the last MiB
  only once it matched), read by an aiohttp client and by curl. With the GET, the ceilings of its two halves
  in the same run: the stored file sent by sendfile without hashing, and sha256 alone in one thread; and the
  CPU time the daemon and curl spent on the curl GET, which bounds it on a machine of few cores whatever
  else runs there.
- cold start: `micd run` spawned → ports.json written and /healthz answering (what `mic daemon start` waits
  for), on an existing cache (the usual case) and on an empty one (first use).
- idle RSS of the daemon (psutil): fresh, and idle after the 4 KiB runs.

Bounded: every measurement stops at its op count or its time cap, whichever comes first. Prints medians over
the repetitions. All servers bind 127.0.0.1; the bench stops only the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from micd.store import Digest, new_hasher
from micd.tiers.disk.files import start_writeback
from micd.tiers.disk.layout import Layout

KIB4 = 4096
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Daemon:
    process: subprocess.Popen
    http: str
    token: str
    ready_seconds: float

    def rss_mib(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / (1 << 20)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(root: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    state = root / "state"
    ports = state / "ports.json"
    ports.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "micd.main",
            "run",
            "--detached",
            "--state-dir",
            str(state),
            "--cache-dir",
            str(root / "cache"),
            "--idle-timeout",
            "0",
            "--log-level",
            "WARNING",
            *args,
        ],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"micd exited with {process.returncode}; see {state / 'daemon.log'}")
        try:
            info = json.loads(ports.read_text())
            with urllib.request.urlopen(f"{info['http']}/healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except (OSError, ValueError):
            time.sleep(0.002)
    ready = time.perf_counter() - started
    return Daemon(process, info["http"], (state / "token").read_text().strip(), ready)


def blob(i: int, size: int = KIB4) -> tuple[bytes, str]:
    data = (i.to_bytes(8, "little") + os.urandom(size - 8)) if size >= 8 else os.urandom(size)
    return data, f"/cas/sha256/{hashlib.sha256(data).hexdigest()}/{size}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_ops(
    daemon: Daemon, op: Callable, items: list, concurrency: int, cap: float
) -> dict[str, Any]:
    """Run `op(session, item)` over items with `concurrency` workers; ops/s and latency percentiles in ms, the
    count, and the items done."""
    latencies: list[float] = []
    done: list = []
    queue = list(reversed(items))
    deadline = time.perf_counter() + cap
    headers = {"Authorization": f"Bearer {daemon.token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(daemon.http, headers=headers, connector=connector) as session:

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                item = queue.pop()
                t0 = time.perf_counter()
                await op(session, item)
                latencies.append(time.perf_counter() - t0)
                done.append(item)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "ops": len(latencies) / elapsed,
        "p50": pct(latencies, 0.5) * 1e3,
        "p99": pct(latencies, 0.99) * 1e3,
        "n": len(latencies),
        "done": done,
    }


async def put_op(session: aiohttp.ClientSession, item: tuple[bytes, str]) -> None:
    async with session.put(item[1], data=item[0]) as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"PUT {item[1]} → {response.status}: {await response.text()}")


async def get_op(session: aiohttp.ClientSession, item: tuple[bytes, str]) -> None:
    async with session.get(item[1]) as response:
        body = await response.read()
        if response.status != 200 or len(body) != len(item[0]):
            raise RuntimeError(f"GET {item[1]} → {response.status}")


def small(daemon: Daemon, kind: str, concurrency: int, n: int, cap: float, blobs: list | None = None) -> dict:
    items = blobs if blobs is not None else [blob(i) for i in range(n)]
    return asyncio.run(run_ops(daemon, put_op if kind == "put" else get_op, items, concurrency, cap))


async def _large(daemon: Daemon, mib: int, function: str = "sha256") -> tuple[float, float, str]:
    block = os.urandom(16 << 20)
    hasher = new_hasher(function)
    for _ in range(mib // 16):
        hasher.update(block)
    size = (mib // 16) * (16 << 20)
    path = f"/cas/{function}/{hasher.hexdigest()}/{size}"

    async def body():
        for _ in range(mib // 16):
            yield block

    headers = {"Authorization": f"Bearer {daemon.token}", "Content-Length": str(size)}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(daemon.http, headers=headers, timeout=timeout) as session:
        t0 = time.perf_counter()
        async with session.put(path, data=body()) as response:
            assert response.status == 201, (response.status, await response.text())
        put_s = time.perf_counter() - t0
    async with aiohttp.ClientSession(
        daemon.http,
        timeout=timeout,
        read_bufsize=4 << 20,
        headers={"Authorization": f"Bearer {daemon.token}"},
    ) as session:
        t0 = time.perf_counter()
        got = 0
        async with session.get(path) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(4 << 20):
                got += len(chunk)
        get_s = time.perf_counter() - t0
        assert got == size
    return size / put_s / 1e6, size / get_s / 1e6, path


class Moto:
    """A moto S3 server on 127.0.0.1 with one bucket."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **AWS},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/bench", method="PUT"), timeout=10).close()

    def args(self) -> list[str]:
        return ["--s3-bucket", "bench", "--s3-endpoint-url", self.url]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _fresh(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def bench_small(
    tier: str, root: Path, args: argparse.Namespace, moto: Moto | None
) -> dict[tuple, list[dict]]:
    """4 KiB PUT and GET per concurrency, `reps` times, fresh blobs every time."""
    results: dict[tuple, list[dict]] = {}
    s3 = moto.args() if moto else []
    env = AWS if moto else None
    budget = ["--memory-budget", "0"] if tier in ("disk", "s3") else ["--memory-budget", "1GiB"]
    for rep in range(args.reps):
        for clients in (1, 32):
            n = args.ops if tier != "s3" else args.s3_ops
            items = [blob(rep * 10_000_000 + clients * 100_000 + i) for i in range(n)]
            daemon = start_daemon(_fresh(root), *budget, *s3, env=env)
            try:
                put = small(daemon, "put", clients, n, args.cap, items)
                results.setdefault((tier, "put", clients), []).append(put)
                items = put.pop("done")  # the time cap may have stopped the PUTs early: GET what exists
                if tier == "memory":
                    small(daemon, "get", clients, n, args.cap, items)  # fill the memory tier (untimed)
                if tier == "s3":  # stop drains the upload queue; then only S3 has the blobs
                    daemon.stop()
                    shutil.rmtree(root / "cache")
                    daemon = start_daemon(root, *budget, *s3, env=env)
                results.setdefault((tier, "get", clients), []).append(
                    small(daemon, "get", clients, n, args.cap, items)
                )
                results[(tier, "get", clients)][-1].pop("done")
            finally:
                daemon.stop()
    return results


def curl_put_mbps(daemon: Daemon, work: Path, mib: int, function: str) -> float | None:
    """PUT a fresh blob from a file with curl: the server's verified ingest rate without Python as client."""
    if shutil.which("curl") is None:
        return None
    block, hasher, source = os.urandom(16 << 20), new_hasher(function), work / "upload.bin"
    with open(source, "wb") as handle:
        for _ in range(mib // 16):
            handle.write(block)
            hasher.update(block)
        handle.flush()
        os.fsync(handle.fileno())  # else the source's own writeback competes with the daemon's during the PUT
    path = f"/cas/{function}/{hasher.hexdigest()}/{source.stat().st_size}"
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload}", "-T", str(source),
         "-H", "Expect:", "-H", f"Authorization: Bearer {daemon.token}", f"{daemon.http}{path}"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    source.unlink()
    status, speed = out.stdout.split()
    if status != "201":
        raise RuntimeError(f"curl PUT {path} → {status}")
    return float(speed) / 1e6


def curl_get_mbps(daemon: Daemon, path: str) -> float | None:
    """GET with curl to /dev/null: the server's send rate without Python on the client side."""
    if shutil.which("curl") is None:
        return None
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download}",
            "-H",
            f"Authorization: Bearer {daemon.token}",
            f"{daemon.http}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(out.stdout) / 1e6


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children (curl, once `subprocess.run` returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sendfile_mbps(path: Path) -> float | None:
    """The send half's ceiling for a verified GET: `path` sent by sendfile over loopback to curl from a bare
    socket, no hashing, no event loop (what a GET would reach if hashing were free)."""
    if shutil.which("curl") is None:
        return None
    size = path.stat().st_size
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(60)

        def serve() -> None:
            conn, _ = server.accept()
            with conn, open(path, "rb") as file:
                conn.recv(65536)  # curl's one small GET
                conn.sendall(
                    f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode()
                )
                sent = 0
                while sent < size:
                    sent += os.sendfile(conn.fileno(), file.fileno(), sent, size - sent)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            out = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}",
                 f"http://127.0.0.1:{server.getsockname()[1]}/"],
                capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
        finally:
            thread.join()
    return float(out.stdout) / 1e6


def device_write_mbps(work: Path, mib: int) -> float:
    """The ceiling a durable PUT cannot beat: write `mib` MiB and fsync it, no hashing, no network, with the
    writeback started per block as the disk tier does.

    The file stays until the next call: removing it right away would hand the PUT that follows the page-cache
    memory just freed, which on a VM that returns freed memory to its host is far cheaper than the fresh
    memory a PUT of a new blob otherwise gets (`bench/machine_costs.py`), and would flatter the PUT.
    """
    block, path = os.urandom(16 << 20), work / "device-baseline.bin"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        for index in range(mib // 16):
            handle.write(block)
            start_writeback(handle.fileno(), index * len(block), len(block))
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    return (mib // 16) * (16 << 20) / seconds / 1e6


def sha256_mbps(mib: int) -> float:
    """The other ceiling: hashing alone, one thread, as the verifier does."""
    block, hasher = os.urandom(16 << 20), new_hasher("sha256")
    started = time.perf_counter()
    for _ in range(mib // 16):
        hasher.update(block)
    return (mib // 16) * (16 << 20) / (time.perf_counter() - started) / 1e6


def bench_large(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Large PUT/GET on a fresh cache per repetition; first starts, restarts on a full cache, idle RSS."""
    keys = (
        "put",
        "get",
        "curl",
        "b3put",
        "b3get",
        "cput",
        "b3cput",
        "first",
        "start",
        "rss_fresh",
        "rss_loaded",
        "device",
        "sha256",
        "sendfile",
        "get_cpu",
        "curl_cpu",
    )
    out: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.reps):
        daemon = start_daemon(_fresh(root))
        out["first"].append(daemon.ready_seconds)
        try:
            time.sleep(1.0)
            out["rss_fresh"].append(daemon.rss_mib())
            small(daemon, "put", 32, 2000, args.cap)
            out["device"].append(device_write_mbps(root, args.large_mib))  # same disk, just before the PUT
            out["sha256"].append(sha256_mbps(args.large_mib))
            put, get, path = asyncio.run(_large(daemon, args.large_mib))
            out["put"].append(put)
            out["get"].append(get)
            daemon_cpu, curl_cpu = daemon.cpu_seconds(), _children_cpu_seconds()
            curl = curl_get_mbps(daemon, path)
            if curl is not None:
                out["curl"].append(curl)
                out["get_cpu"].append(daemon.cpu_seconds() - daemon_cpu)
                out["curl_cpu"].append(_children_cpu_seconds() - curl_cpu)
            _, function, hex_, size = path.split("/")[1:]
            stored = Layout(root / "cache").blob_path(Digest(function, hex_, int(size)))
            bare = sendfile_mbps(stored)
            if bare is not None:
                out["sendfile"].append(bare)
            b3put, b3get, _ = asyncio.run(_large(daemon, args.large_mib, "blake3"))
            out["b3put"].append(b3put)
            out["b3get"].append(b3get)
            for key, function in (("cput", "sha256"), ("b3cput", "blake3")):
                speed = curl_put_mbps(daemon, root, args.large_mib, function)
                if speed is not None:
                    out[key].append(speed)
            time.sleep(2.0)
            out["rss_loaded"].append(daemon.rss_mib())
        finally:
            daemon.stop()
    for _ in range(args.starts):  # the usual case: the shared cache already exists
        daemon = start_daemon(root)
        out["start"].append(daemon.ready_seconds)
        daemon.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", default="memory,disk,s3")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=3000, help="4 KiB ops per measurement (memory, disk)")
    parser.add_argument(
        "--s3-ops", type=int, default=400, help="4 KiB ops per measurement (s3: moto is slow)"
    )
    parser.add_argument("--cap", type=float, default=15.0, help="seconds per measurement at most")
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--starts", type=int, default=7, help="cold starts measured")
    parser.add_argument("--quick", action="store_true", help="small counts, 256 MiB large blob, 1 repetition")
    parser.add_argument(
        "--dir", type=Path, default=None, help="work dir (default: a temp dir on /tmp's disk)"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.ops, args.s3_ops, args.large_mib, args.starts = 1, 500, 100, 256, 3
    tiers = [t for t in args.tiers.split(",") if t]
    work = args.dir or Path(tempfile.mkdtemp(prefix="mic-cas-bench-"))
    moto = Moto() if "s3" in tiers else None
    small_results: dict[tuple, list[dict]] = {}
    try:
        for tier in tiers:
            small_results.update(bench_small(tier, work / tier, args, moto if tier == "s3" else None))
        large = bench_large(work / "large", args)
    finally:
        if moto:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nmicd HTTP CAS benchmark: medians of {args.reps} runs; {os.cpu_count()} CPUs; "
        f"load average {load}; "
        f"python {sys.version.split()[0]}"
    )
    print(f"{'tier':<7} {'op':<4} {'clients':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'n':>6}")
    for (tier, op, clients), runs in small_results.items():
        print(
            f"{tier:<7} {op:<4} {clients:>7} {med(r['ops'] for r in runs):>9.0f} "
            f"{med(r['p50'] for r in runs):>8.2f} {med(r['p99'] for r in runs):>8.2f} "
            f"{int(med(r['n'] for r in runs)):>6}"
        )
    curl = f", GET with curl {med(large['curl']):.0f} MB/s" if large["curl"] else ""
    print(
        f"\nlarge blob {args.large_mib} MiB (sha256, disk tier): PUT {med(large['put']):.0f} MB/s, "
        f"GET {med(large['get']):.0f} MB/s (aiohttp client){curl}"
    )
    print(
        f"  ceilings measured just before each PUT: write+fsync {med(large['device']):.0f} MB/s "
        f"(same disk, no hashing), sha256 {med(large['sha256']):.0f} MB/s (one thread); "
        f"PUT ÷ min(ceilings) = "
        f"{med(p / min(d, h) for p, d, h in zip(large['put'], large['device'], large['sha256'], strict=True)):.2f}"
    )
    if large["cput"]:
        print(
            f"  with curl as the client: PUT sha256 {med(large['cput']):.0f} MB/s, "
            f"PUT blake3 {med(large['b3cput']):.0f} MB/s"
        )
    if large["sendfile"]:
        print(
            f"  GET ceilings, same run: the stored file by bare sendfile to curl {med(large['sendfile']):.0f} MB/s "
            f"(no hashing), sha256 {med(large['sha256']):.0f} MB/s; GET (curl) ÷ sha256 = "
            f"{med(c / h for c, h in zip(large['curl'], large['sha256'], strict=True)):.2f}"
        )
        daemon_cpu, curl_cpu = med(large["get_cpu"]), med(large["curl_cpu"])
        cpus, size_mb = os.cpu_count() or 1, (args.large_mib // 16) * (16 << 20) / 1e6
        print(
            f"  CPU per GET (curl): daemon {daemon_cpu:.2f} s, curl {curl_cpu:.2f} s: with {cpus} CPUs and "
            f"nothing else running, at best {cpus * size_mb / (daemon_cpu + curl_cpu):.0f} MB/s"
        )
    print(
        f"large blob {args.large_mib} MiB (blake3, disk tier): PUT {med(large['b3put']):.0f} MB/s, "
        f"GET {med(large['b3get']):.0f} MB/s (aiohttp client)"
    )
    for label, key in (
        ("cold start to ready, existing cache", "start"),
        ("first start, empty cache", "first"),
    ):
        seconds = large[key]
        print(
            f"{label}: median {med(seconds) * 1e3:.0f} ms (n={len(seconds)}, min {min(seconds) * 1e3:.0f}, "
            f"max {max(seconds) * 1e3:.0f})"
        )
    print(
        f"idle RSS: fresh {med(large['rss_fresh']):.1f} MiB, "
        f"idle after load {med(large['rss_loaded']):.1f} MiB"
    )


if __name__ == "__main__":
    main()
