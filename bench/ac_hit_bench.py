"""Bazel HTTP action cache hit for an ActionResult with 50 outputs (issue 11): latency, and store writes per hit.

    python bench/ac_hit_bench.py                        # this tree
    python bench/ac_hit_bench.py --before 6ea153e       # that commit (exported by `git archive`), then this tree
    python bench/ac_hit_bench.py --memory-budget 0 …    # no memory tier: every read comes from the disk tier

Each source tree runs as the real daemon (`python -m micd.main run`: memory + disk tiers in a fresh temp cache
dir, token auth). One keep-alive client uploads 50 output blobs (`PUT /cas/<hex>`) and an ActionResult naming
them (`PUT /ac/<key>`), then times `--hits` sequential `GET /ac/<key>` hits after a warm-up, and as many
`GET /cas/<hex>` without a size (the GETs Bazel sends next). Writes per hit: the daemon's own count of store
writes (`/stats`, series `<tool>/all/put`) across the timed hits, divided by the hits; a read path should
write nothing. Prints median and p90 per tree, and the before/after ratio of the medians.

Bounded: a few hundred requests per tree. Binds 127.0.0.1 only; stops only the daemons it started, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2  # noqa: E402 (after the path insert)

OUTPUTS = 50
WARMUP = 20


@dataclass
class Daemon:
    process: subprocess.Popen
    http: str
    token: str
    bazel_path: str = ""
    """Where Bazel's HTTP cache is mounted ("" before the frontend seam, "/bazel" after): from the bazelrc."""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(source: Path, work: Path, *args: str) -> Daemon:
    """`micd run` from `source` (its own micd and protocols packages first on the path), state in `work`."""
    state = work / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "micd.main", "run", "--detached", "--state-dir", str(state),
         "--cache-dir", str(work / "cache"), "--idle-timeout", "0", "--log-level", "WARNING", *args],
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"micd exited with {process.returncode}; see {state / 'daemon.log'}")
        if time.monotonic() > deadline:
            Daemon(process, "", "").stop()
            raise RuntimeError("micd did not answer /healthz within 60 s")
        try:
            info = json.loads((state / "ports.json").read_text())
            with urllib.request.urlopen(f"{info['http']}/healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except (OSError, ValueError):
            time.sleep(0.01)
    rc = (state / "bazelrc").read_text()
    found = re.search(r"^build:mic-http --remote_cache=(\S+)$", rc, re.M)
    if found is None:
        raise RuntimeError(f"no build:mic-http --remote_cache line in {state / 'bazelrc'}")
    url = found.group(1)
    return Daemon(process, info["http"], (state / "token").read_text().strip(), url[len(info["http"]) :])


def outputs() -> list[tuple[bytes, str]]:
    """50 output blobs of assorted sizes (100 B to ~64 KiB), and their sha256."""
    blobs = []
    for i in range(OUTPUTS):
        data = i.to_bytes(4, "little") + os.urandom(100 + (i * 1301) % 65_000)
        blobs.append((data, hashlib.sha256(data).hexdigest()))
    return blobs


def action_result(blobs: list[tuple[bytes, str]]) -> bytes:
    files = [
        re_pb2.OutputFile(path=f"out/{i}", digest=re_pb2.Digest(hash=hex_, size_bytes=len(data)))
        for i, (data, hex_) in enumerate(blobs)
    ]
    return re_pb2.ActionResult(output_files=files, exit_code=0).SerializeToString()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def store_writes(session: aiohttp.ClientSession) -> int:
    """The daemon's count of store writes so far, every tool (a protocol's writes all go through its view)."""
    async with session.get("/stats") as response:
        series = (await response.json())["metrics"]["series"]
    return sum(value["count"] for key, value in series.items() if key.endswith("/all/put"))


async def timed_gets(session: aiohttp.ClientSession, paths: list[str]) -> list[float]:
    latencies = []
    for path in paths:
        started = time.perf_counter()
        async with session.get(path) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path} → {response.status}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure(daemon: Daemon, hits: int) -> dict[str, float]:
    blobs = outputs()
    body = action_result(blobs)
    key = hashlib.sha256(b"action %d" % time.monotonic_ns()).hexdigest()
    headers = {"Authorization": f"Bearer {daemon.token}"}
    connector = aiohttp.TCPConnector(limit=1)
    base = daemon.bazel_path
    async with aiohttp.ClientSession(daemon.http, headers=headers, connector=connector) as session:
        for data, hex_ in blobs:
            async with session.put(f"{base}/cas/{hex_}", data=data) as response:
                assert response.status == 200, response.status
        async with session.put(f"{base}/ac/{key}", data=body) as response:
            assert response.status == 200, response.status
        await timed_gets(session, [f"{base}/ac/{key}"] * WARMUP)
        before = await store_writes(session)
        ac = await timed_gets(session, [f"{base}/ac/{key}"] * hits)
        writes = await store_writes(session) - before
        cas = await timed_gets(session, [f"{base}/cas/{blobs[i % OUTPUTS][1]}" for i in range(hits)])
    return {
        "ac_p50": statistics.median(ac) * 1e3,
        "ac_p90": pct(ac, 0.9) * 1e3,
        "writes_per_hit": writes / hits,
        "cas_p50": statistics.median(cas) * 1e3,
        "cas_p90": pct(cas, 0.9) * 1e3,
    }


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` as plain files (`git archive`: the repository and its worktrees are not touched)."""
    archive = into / "src.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=out, check=True)
    target = into / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=300, help="timed AC hits (and CAS GETs) per tree")
    parser.add_argument("--before", metavar="REV", help="also measure this commit first, for a ratio")
    parser.add_argument("--memory-budget", help="the daemon's memory tier (0: reads come from the disk tier)")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ac-hit-bench-") as tmp:
        trees = [("this tree", ROOT)]
        if args.before:
            trees.insert(0, (args.before, export(args.before, Path(tmp))))
        for label, source in trees:
            work = Path(tmp) / f"run-{len(results)}"
            extra = ["--memory-budget", args.memory_budget] if args.memory_budget else []
            daemon = start_daemon(source, work, *extra)
            try:
                results[label] = asyncio.run(measure(daemon, args.hits))
            finally:
                daemon.stop()
    tiers = "disk tier only" if args.memory_budget == "0" else "memory + disk tiers"
    print(f"HTTP AC hit, ActionResult with {OUTPUTS} outputs, {args.hits} sequential hits, {tiers}")
    print("| code | AC GET p50 ms | AC GET p90 ms | store writes per hit | CAS GET by hash p50 / p90 ms |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['ac_p50']:.2f} | {r['ac_p90']:.2f} | {r['writes_per_hit']:g} "
            f"| {r['cas_p50']:.2f} / {r['cas_p90']:.2f} |"
        )
    if args.before:
        old, new = results[args.before], results["this tree"]
        print(f"AC GET median: {old['ac_p50'] / new['ac_p50']:.1f}x faster")


if __name__ == "__main__":
    main()
