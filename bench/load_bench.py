"""Load benchmark of issue 10: does the real daemon stay correct, responsive and small under many clients?

    python bench/load_bench.py                # 200 HTTP clients × 60 s, then 64 gRPC clients × 30 s
    python bench/load_bench.py --quick        # 20 HTTP clients × 10 s, 8 gRPC clients × 5 s (development)
    python bench/load_bench.py --check        # exit 1 when a target is missed

Starts one `micd` (`python -m micd.main run`, as cas_bench does) on 127.0.0.1 with a temporary cache and state
dir and the default storage (memory tier over the local disk tier, no S3), then runs two phases against it:

- HTTP: concurrent aiohttp clients (one keep-alive connection each), half `PUT`, half `GET` on
  `/cas/sha256/<hex>/<size>` with the state dir's Bearer token. Blob sizes are uniform in 4 KiB–1 MiB
  (seeded); every PUT is a new blob, GETs pick blobs stored before (some seeded before the phase) and hash
  the body.
- gRPC: concurrent grpc.aio clients (over 4 channels) calling BatchUpdateBlobs / BatchReadBlobs with 1–4 blobs
  of the same sizes per call, every returned blob hashed.

Per phase: requests, errors (non-2xx or gRPC/blob status, connection errors, timeouts, wrong bytes), latency
p50/p99/max over every request (failed ones too) and how many took over 5 s, and the daemon's peak RSS
(its process tree, sampled every 100 ms). The HTTP phase also counts the TCP connections the clients had to
open: aiohttp retries an idempotent request once, silently, when a kept-alive connection was dropped, so more
connections than clients is how dropped keep-alive connections show up even when no request failed.
Targets (issue 10): 0 errors, no request over 5 s, p99 ≤ 2 s, peak RSS ≤ 512 MiB.

Each phase's load comes from one child process of this script (`--client`), so the load generator takes at
most about one of the machine's cores and the daemon keeps the other; it stops starting requests when its time
is up and cancels whatever is still running `--request-timeout` seconds later. This process only samples RSS.
The daemon is always stopped (SIGTERM, then SIGKILL) and the temporary dirs removed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
from cas_bench import pct, start_daemon
from reapi_bench import Client, Server, cpu_seconds

from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2

REPO = Path(__file__).resolve().parents[1]
MIN_BLOB, MAX_BLOB = 4 << 10, 1 << 20
BATCH_BLOBS = 4  # at most 4 × 1 MiB per batch call: the daemon's max_batch_total_size_bytes is 4 MiB
SLOW_SECONDS = 5.0
TARGET_P99_SECONDS = 2.0
TARGET_RSS_MIB = 512.0
RSS_INTERVAL = 0.1
EXAMPLES = 5  # error messages kept per phase


# --- the load generator (runs in the `--client` child process) ---


class Blobs:
    """New blobs of seeded random sizes: an 8-byte serial then a shared random tail (a copy, not urandom)."""

    def __init__(self, seed: int, tag: int) -> None:
        self.tail = random.Random(seed).randbytes(MAX_BLOB)
        self.serials = itertools.count(tag << 32)

    def make(self, rng: random.Random) -> tuple[bytes, str]:
        size = rng.randint(MIN_BLOB, MAX_BLOB)
        data = next(self.serials).to_bytes(8, "little") + self.tail[8:size]
        return data, hashlib.sha256(data).hexdigest()


@dataclass
class Tally:
    """What one phase's requests did."""

    latencies: list[float] = field(default_factory=list)
    by_op: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    bytes: int = 0

    def record(self, started: float, error: str | None, detail: str = "", size: int = 0) -> None:
        seconds = time.perf_counter() - started
        self.latencies.append(seconds)
        self.by_op.setdefault(detail.split(" ", 1)[0], []).append(seconds)  # detail starts with the operation
        if error is None:
            self.bytes += size
            return
        self.errors[error] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{error}: {detail}"[:300])

    def summary(self, seconds: float) -> dict:
        lat = self.latencies
        return {
            "requests": len(lat),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "examples": self.examples,
            "p50": pct(lat, 0.5),
            "p99": pct(lat, 0.99),
            "max": max(lat, default=float("nan")),
            "p50_p99_by_op": {op: (pct(x, 0.5), pct(x, 0.99)) for op, x in sorted(self.by_op.items())},
            "slow": sum(1 for x in lat if x > SLOW_SECONDS),
            "seconds": seconds,
            "mbytes": self.bytes / 1e6,
        }


async def run_workers(worker: Callable[[int], Coroutine[Any, Any, None]], clients: int, limit: float) -> int:
    """Run `worker(w)` per client; cancel those still running after `limit` s and return how many were."""
    tasks = [asyncio.create_task(worker(w)) for w in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a bug in the load generator must not pass for a quiet daemon
    return len(pending)


async def timed_phase(cfg: dict, tally: Tally, worker: Callable[[int, float], Coroutine[Any, Any, None]]) -> float:
    """Run the clients for cfg["seconds"]; an unfinished request counts as an error. Returns the duration."""
    started = time.perf_counter()
    deadline = started + cfg["seconds"]
    limit = cfg["seconds"] + cfg["request_timeout"] + 5
    unfinished = await run_workers(lambda w: worker(w, deadline), cfg["clients"], limit)
    if unfinished:  # each had run at least `limit - seconds`: record that, a lower bound, as its latency
        tally.errors["unfinished at the phase's bound"] += unfinished
        tally.latencies.extend([limit - cfg["seconds"]] * unfinished)
    return time.perf_counter() - started


def failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"connection: {type(exc).__name__}"


async def http_put(session: aiohttp.ClientSession, blob: tuple[bytes, str], tally: Tally) -> bool:
    data, digest_hex = blob
    path, error, detail = f"/cas/sha256/{digest_hex}/{len(data)}", None, ""
    started = time.perf_counter()
    try:
        async with session.put(path, data=data) as response:
            detail = (await response.read())[:200].decode(errors="replace")
            if not 200 <= response.status < 300:
                error = f"PUT HTTP {response.status}"
    except (aiohttp.ClientError, OSError) as exc:  # OSError includes TimeoutError
        error, detail = failure(exc), repr(exc)
    tally.record(started, error, f"PUT {path} {detail}", len(data))
    return error is None


async def http_get(session: aiohttp.ClientSession, digest_hex: str, size: int, tally: Tally) -> None:
    path, error, detail = f"/cas/sha256/{digest_hex}/{size}", None, ""
    started = time.perf_counter()
    try:
        async with session.get(path) as response:
            body = await response.read()
            if response.status != 200:
                error, detail = f"GET HTTP {response.status}", body[:200].decode(errors="replace")
            elif len(body) != size or hashlib.sha256(body).hexdigest() != digest_hex:
                error, detail = "wrong bytes", f"{len(body)} bytes"
    except (aiohttp.ClientError, OSError) as exc:
        error, detail = failure(exc), repr(exc)
    tally.record(started, error, f"GET {path} {detail}", size)


async def http_load(cfg: dict) -> dict:
    """The HTTP phase: PUT the seed blobs, then half PUT / half GET per client until the time is up."""
    blobs, tally, seed_tally = Blobs(cfg["seed"], 1), Tally(), Tally()
    stored: list[tuple[str, int]] = []
    connections = Counter[str]()

    async def count(name: str) -> None:
        connections[name] += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *_: count("opened"))
    trace.on_connection_reuseconn.append(lambda *_: count("reused"))
    session = aiohttp.ClientSession(
        cfg["url"],
        headers={"Authorization": f"Bearer {cfg['token']}"},
        connector=aiohttp.TCPConnector(limit=cfg["clients"]),
        timeout=aiohttp.ClientTimeout(total=cfg["request_timeout"]),
        trace_configs=[trace],
    )
    async with session:
        rng = random.Random(cfg["seed"])
        for _ in range(cfg["seed_blobs"]):
            blob = blobs.make(rng)
            if await http_put(session, blob, seed_tally):
                stored.append((blob[1], len(blob[0])))
        connections.clear()  # count the phase's connections only

        async def worker(w: int, deadline: float) -> None:
            rng = random.Random(cfg["seed"] * 100_003 + w)
            while time.perf_counter() < deadline:
                if rng.random() < 0.5 or not stored:
                    blob = blobs.make(rng)
                    if await http_put(session, blob, tally):
                        stored.append((blob[1], len(blob[0])))
                else:
                    await http_get(session, *rng.choice(stored), tally)

        seconds = await timed_phase(cfg, tally, worker)
    summary = tally.summary(seconds)
    return {**summary, "seed_errors": sum(seed_tally.errors.values()), "opened": connections["opened"],
            "reused": connections["reused"]}  # fmt: skip


def grpc_failure(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    return f"gRPC {exc.code().name}", (exc.details() or "")[:200]


async def grpc_update(
    client: Client, w: int, blobs: list[tuple[bytes, str]], tally: Tally, timeout: float
) -> bool:
    request = re_pb2.BatchUpdateBlobsRequest(
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=re_pb2.Digest(hash=h, size_bytes=len(d)), data=d)
            for d, h in blobs
        ]
    )
    error, detail = None, ""
    started = time.perf_counter()
    try:
        response = await client.cas[w % len(client.cas)].BatchUpdateBlobs(
            request, metadata=client.metadata, timeout=timeout
        )
        codes = [r.status.code for r in response.responses if r.status.code != 0]
        if codes or len(response.responses) != len(blobs):
            error, detail = "blob status", f"codes {codes}, {len(response.responses)}/{len(blobs)} answered"
    except grpc.aio.AioRpcError as exc:
        error, detail = grpc_failure(exc)
    tally.record(started, error, f"BatchUpdateBlobs {detail}", sum(len(d) for d, _ in blobs))
    return error is None


async def grpc_read(
    client: Client, w: int, wanted: list[tuple[str, int]], tally: Tally, timeout: float
) -> None:
    digests = [re_pb2.Digest(hash=h, size_bytes=s) for h, s in wanted]
    error, detail = None, ""
    started = time.perf_counter()
    try:
        response = await client.cas[w % len(client.cas)].BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(digests=digests), metadata=client.metadata, timeout=timeout
        )
        got = {r.digest.hash: r for r in response.responses}
        for digest_hex, size in wanted:
            r = got.get(digest_hex)
            if r is None or r.status.code != 0:
                error, detail = "blob status", f"{digest_hex}: {r.status.code if r else 'not answered'}"
            elif len(r.data) != size or hashlib.sha256(r.data).hexdigest() != digest_hex:
                error, detail = "wrong bytes", f"{digest_hex}: {len(r.data)} bytes"
    except grpc.aio.AioRpcError as exc:
        error, detail = grpc_failure(exc)
    tally.record(started, error, f"BatchReadBlobs {detail}", sum(s for _, s in wanted))


async def grpc_load(cfg: dict) -> dict:
    """The gRPC phase: BatchUpdate the seed blobs, then half BatchUpdate / half BatchRead per client."""
    metadata = (("authorization", f"Bearer {cfg['token']}"),)
    server = Server("micd", cfg["address"], metadata, None)  # type: ignore[arg-type]  # not ours to stop
    client, blobs, tally, seed_tally = Client(server), Blobs(cfg["seed"], 2), Tally(), Tally()
    stored: list[tuple[str, int]] = []
    timeout = cfg["request_timeout"]
    try:
        rng = random.Random(cfg["seed"])
        for _ in range(0, cfg["seed_blobs"], BATCH_BLOBS):
            batch = [blobs.make(rng) for _ in range(BATCH_BLOBS)]
            if await grpc_update(client, 0, batch, seed_tally, timeout):
                stored.extend((h, len(d)) for d, h in batch)

        async def worker(w: int, deadline: float) -> None:
            rng = random.Random(cfg["seed"] * 100_003 + w)
            while time.perf_counter() < deadline:
                count = rng.randint(1, BATCH_BLOBS)
                if rng.random() < 0.5 or len(stored) < count:
                    batch = [blobs.make(rng) for _ in range(count)]
                    if await grpc_update(client, w, batch, tally, timeout):
                        stored.extend((h, len(d)) for d, h in batch)
                else:
                    await grpc_read(client, w, rng.sample(stored, count), tally, timeout)

        seconds = await timed_phase(cfg, tally, worker)
    finally:
        await client.close()
    return {**tally.summary(seconds), "seed_errors": sum(seed_tally.errors.values())}


def client_main(cfg: dict) -> None:
    """`--client`: run one phase's load and print its summary as one JSON line."""
    result = asyncio.run(http_load(cfg) if cfg["kind"] == "http" else grpc_load(cfg))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**result, "client_cpu": usage.ru_utime + usage.ru_stime}))


# --- the driver: the daemon, the RSS sampler, the report ---


def tree_rss(process: psutil.Process) -> int:
    """RSS in bytes of a process and all its descendants (those that vanish meanwhile count 0)."""
    total = 0
    for proc in (process, *process.children(recursive=True)):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class RssSampler(threading.Thread):
    """Samples the daemon tree's RSS every RSS_INTERVAL seconds until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(RSS_INTERVAL):
            try:
                self.samples.append((time.monotonic(), tree_rss(self.process)))
            except psutil.Error:
                return  # the daemon is gone; the phase reports it

    def peak_mib(self, since: float) -> float:
        return max((rss for t, rss in self.samples if t >= since), default=0) / (1 << 20)


def run_phase(cfg: dict, daemon_pid: int, sampler: RssSampler) -> dict:
    """Run one phase's load generator as a child process; add the daemon's peak RSS and CPU to its result."""
    daemon = psutil.Process(daemon_pid)
    cpu, since = cpu_seconds(daemon), time.monotonic()
    print(f"{cfg['kind']}: {cfg['clients']} clients × {cfg['seconds']:g} s…", file=sys.stderr, flush=True)
    child = subprocess.run(
        [sys.executable, __file__, "--client", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=cfg["seconds"] + cfg["request_timeout"] + 300,  # seeding included; subprocess.run kills it
    )
    if child.returncode != 0:
        raise RuntimeError(f"{cfg['kind']} load generator failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(
        kind=cfg["kind"],
        clients=cfg["clients"],
        rss_peak=sampler.peak_mib(since),
        daemon_cpu=cpu_seconds(daemon),
        load=os.getloadavg(),
    )
    result["daemon_cpu"] -= cpu
    return result


def memory_tier_mib(daemon) -> float:
    """The memory tier's bytes after a phase (from /stats): the part of the RSS that is the cache's own budget."""
    request = urllib.request.Request(f"{daemon.http}/stats", headers={"Authorization": f"Bearer {daemon.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["store"]["memory"]["bytes"] / (1 << 20)


def log_problems(log: Path) -> list[str]:
    """The daemon log's warning and error lines (it runs at log level WARNING)."""
    try:
        return [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """(target, measured vs target, met) for one phase."""
    p99, rss = result["p99"], result["rss_peak"]
    return [
        ("errors = 0", f"{result['errors']}", result["errors"] == 0),
        ("requests over 5 s = 0", f"{result['slow']}", result["slow"] == 0),
        ("p99 ≤ 2 s", f"{p99:.3f} s = {p99 / TARGET_P99_SECONDS:.2f}× target", p99 <= TARGET_P99_SECONDS),
        ("peak RSS ≤ 512 MiB", f"{rss:.0f} MiB = {rss / TARGET_RSS_MIB:.2f}× target", rss <= TARGET_RSS_MIB),
    ]


def report(results: list[dict], header: list[str], problems: list[str]) -> bool:
    """Print the tables; return whether every target was met."""
    print("\n".join(header))
    cols = f"{'phase':<6}{'clients':>8}{'s':>6}{'requests':>10}{'req/s':>8}{'MB/s':>7}{'errors':>8}"
    cols += f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'>5 s':>6}{'peak RSS MiB':>14}{'daemon CPU s':>14}"
    cols += f"{'client CPU s':>14}"
    print(cols + "\n" + "-" * len(cols))
    for r in results:
        s = r["seconds"]
        print(
            f"{r['kind']:<6}{r['clients']:>8}{s:>6.1f}{r['requests']:>10}{r['requests'] / s:>8.1f}"
            f"{r['mbytes'] / s:>7.1f}{r['errors']:>8}{r['p50'] * 1e3:>9.1f}{r['p99'] * 1e3:>9.1f}"
            f"{r['max'] * 1e3:>9.1f}{r['slow']:>6}{r['rss_peak']:>14.1f}{r['daemon_cpu']:>14.1f}"
            f"{r['client_cpu']:>14.1f}"
        )
    for r in results:
        extra = f"; memory tier at its end {r['memory_tier']:.0f} MiB"
        extra += f"; TCP connections opened {r['opened']}, reused {r['reused']}" if "opened" in r else ""
        print(f"\n{r['kind']}: seeding errors {r['seed_errors']}; load average at its end "
              f"{', '.join(f'{x:.2f}' for x in r['load'])}{extra}")  # fmt: skip
        for op, (p50, p99) in r["p50_p99_by_op"].items():
            print(f"  {op}: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
        for kind, n in sorted(r["error_kinds"].items(), key=lambda kv: -kv[1]):
            print(f"  {n:>7} × {kind}")
        for example in r["examples"]:
            print(f"  e.g. {example}")
    print(f"\n{'target':<24}" + "".join(f"{r['kind']:<34}" for r in results))
    met = True
    for i, (name, *_) in enumerate(targets(results[0])):
        cells = [targets(r)[i] for r in results]
        met &= all(ok for *_, ok in cells)
        row = "".join(f"{value + (' met' if ok else ' MISSED'):<34}" for _, value, ok in cells)
        print(f"{name:<24}{row}")
    print(f"\ndaemon log (WARNING and above): {len(problems)} lines")
    for line in problems[:8]:
        print(f"  {line[:200]}")
    return met


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-clients", type=int, default=200)
    parser.add_argument("--http-seconds", type=float, default=60.0)
    parser.add_argument("--grpc-clients", type=int, default=64)
    parser.add_argument("--grpc-seconds", type=float, default=30.0)
    parser.add_argument("--seed-blobs", type=int, default=256, help="blobs stored before each phase")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--request-timeout", type=float, default=30.0, help="a request's bound (an error)")
    parser.add_argument("--quick", action="store_true", help="20 HTTP clients × 10 s, 8 gRPC clients × 5 s")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    if args.quick:
        args.http_clients, args.http_seconds, args.grpc_clients, args.grpc_seconds = 20, 10.0, 8, 5.0
        args.seed_blobs = 64
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally that stops micd
    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mic-load-bench-"))
    daemon, sampler = None, None
    try:
        daemon = start_daemon(work)  # cas_bench: state in work/state, cache in work/cache, no S3
        sampler = RssSampler(daemon.process.pid)
        sampler.start()
        ports = json.loads((work / "state" / "ports.json").read_text())
        common = {"token": daemon.token, "seed": args.seed, "seed_blobs": args.seed_blobs,
                  "request_timeout": args.request_timeout}  # fmt: skip
        phases = [
            {**common, "kind": "http", "url": daemon.http, "clients": args.http_clients,
             "seconds": args.http_seconds},
            {**common, "kind": "grpc", "address": f"127.0.0.1:{ports['grpc_port']}",
             "clients": args.grpc_clients, "seconds": args.grpc_seconds},
        ]  # fmt: skip
        results = []
        for cfg in phases:
            results.append(run_phase(cfg, daemon.process.pid, sampler))
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.process.returncode} during {cfg['kind']}")
            results[-1]["memory_tier"] = memory_tier_mib(daemon)
        problems = log_problems(work / "state" / "daemon.log")
    finally:
        if sampler:
            sampler.stopping.set()
        if daemon:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    header = [
        f"micd load benchmark (issue 10) at commit {git_commit()}; {os.cpu_count()} CPUs; "
        f"python {sys.version.split()[0]}",
        f"load average at start {', '.join(f'{x:.2f}' for x in load_at_start)}; "
        f"blobs 4 KiB–1 MiB (seed {args.seed}); latencies over every request, failed ones included; "
        f"RSS = daemon process tree, sampled every 100 ms",
    ]
    met = report(results, header, problems)
    if args.check and not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
