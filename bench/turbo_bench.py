"""micd's Turborepo API against the peer turborepo-remote-cache (issue 12): ops/s of artifact PUT and GET.

    python bench/turbo_bench.py                    # 3 alternated repetitions, every row
    python bench/turbo_bench.py --reps 1 --seconds 1 --rows put-1k-1   # a smoke run
    python bench/turbo_bench.py --count-syncs      # then each server's fsync-family calls per PUT (strace)
    python bench/turbo_bench.py --micd-wrapper eatmydata --rows put-1k-1,put-1m-32   # micd with no-op fsyncs

Two servers on 127.0.0.1, each with its own fresh temp storage, run side by side in one process tree:

- micd as the real daemon (`python -m micd.main run`, memory + disk tiers, own state and cache dirs, token
  auth), configured the way turbo is: TURBO_API / TURBO_TOKEN / TURBO_TEAM from the daemon's `env.json`;
- turborepo-remote-cache 2.12.0 (npm, pinned; installed by this script with `npm install` into `--peer-dir`
  when absent), local filesystem storage, `LOG_LEVEL=warn` (micd runs at WARNING: neither logs per request).

One aiohttp client implementation talks to both (`/v8/artifacts/<hash>?slug=<team>`, Bearer token, turbo's
`Content-Type: application/octet-stream`). Rows: PUT then GET of 1 KiB and 1 MiB artifacts with 1 and 32
concurrent clients (one keep-alive connection each). Every PUT sends a distinct random body under a fresh
16-hex hash; the GET rows read back the artifacts that server stored in the PUT row of the same size and
concurrency, and check every byte. Each row is bounded by a count and by time (`--seconds`), whichever comes
first; ops/s = completed ops ÷ wall time. Each row runs on both servers back to back, the order flipping every
repetition; the table shows the median over repetitions per server and the ratio micd ÷ peer of the medians
(the per-repetition ratios' range beside it), plus each server process's CPU time per op (user + system,
from /proc, median) and the 1-minute load average before and after.

Diagnostics of what bounds a row (never part of the table's claim): `--count-syncs` attaches strace to each
server for one more untimed 1-client PUT row per size and prints its sync calls per PUT; `--micd-wrapper
eatmydata` (Debian package eatmydata: LD_PRELOAD turning fsync and friends into no-ops) runs the daemon with
unsynced writes, as the peer's are, to measure what micd's durability costs.

Stops only the processes it started, by PID; the temp storage goes with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
PEER_PACKAGE = "turborepo-remote-cache"
PEER_VERSION = "2.12.0"
KIB, MIB = 1 << 10, 1 << 20
SIZES = {"1k": KIB, "1m": MIB}
CLIENTS = (1, 32)
COUNT_BOUND = {KIB: 3000, MIB: 300}
"""Ops per row and server at most (the time bound usually ends a row first on this VM)."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    api: str
    """The URL turbo would be given as TURBO_API: `/v8/artifacts/…` is appended."""
    token: str
    team: str
    stored: dict[tuple[int, int], list[tuple[str, bytes]]] = field(default_factory=dict)
    """(size, clients) → the artifacts the last PUT row of that shape stored here: (hash, body)."""

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process, all its threads (/proc/<pid>/stat, clock ticks)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(process: subprocess.Popen, url: str, token: str, what: str) -> None:
    deadline = time.monotonic() + 60
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within 60 s")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)


def start_micd(work: Path, *args: str, wrapper: list[str] | None = None) -> Server:
    """The real daemon from this tree, state and cache in `work`; its Turborepo client config from env.json.
    `wrapper` prefixes the command (it must exec the daemon, keeping the PID: e.g. `eatmydata`)."""
    state = work / "state"
    process = subprocess.Popen(
        [*(wrapper or []), sys.executable, "-m", "micd.main", "run", "--detached", "--state-dir", str(state),
         "--cache-dir", str(work / "cache"), "--idle-timeout", "0", "--log-level", "WARNING", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (state / "ports.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"micd did not start; see {state / 'daemon.log'}")
            time.sleep(0.02)
        env = json.loads((state / "env.json").read_text())["env"]
        server = Server("micd", process, env["TURBO_API"], env["TURBO_TOKEN"], env["TURBO_TEAM"])
        wait_ready(process, f"{server.api}/v8/artifacts/status", server.token, "micd")
    except BaseException:
        Server("micd", process, "", "", "").stop()
        raise
    return server


def peer_cli(peer_dir: Path) -> Path:
    """The pinned turborepo-remote-cache's cli.js under `peer_dir`, installed there with npm if absent."""
    package = peer_dir / "node_modules" / PEER_PACKAGE
    cli = package / "dist" / "cli.js"
    try:
        installed = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        installed = None
    if installed != PEER_VERSION or not cli.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm not found: it installs the peer server")
        peer_dir.mkdir(parents=True, exist_ok=True)
        print(f"installing {PEER_PACKAGE}@{PEER_VERSION} into {peer_dir} …", file=sys.stderr)
        subprocess.run(
            [npm, "install", "--prefix", str(peer_dir), "--no-audit", "--no-fund", "--no-save",
             f"{PEER_PACKAGE}@{PEER_VERSION}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return cli


def start_peer(cli: Path, work: Path) -> Server:
    storage = work / "storage"
    storage.mkdir(parents=True)
    port, token, team = free_port(), secrets.token_hex(16), "mic"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "STORAGE_PROVIDER": "local",
        "STORAGE_PATH": str(storage),
        "STORAGE_PATH_USE_TMP_FOLDER": "false",
        "TURBO_TOKEN": token,
        "LOG_LEVEL": "warn",
        "NODE_ENV": "production",
    }
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found: it runs the peer server")
    process = subprocess.Popen(
        [node, str(cli)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Server("peer", process, f"http://127.0.0.1:{port}", token, team)
    try:
        wait_ready(process, f"{server.api}/v8/artifacts/status", token, "turborepo-remote-cache")
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class RowResult:
    ops: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


async def run_row(
    server: Server, op: str, size: int, clients: int, bodies: list[bytes], seconds: float
) -> RowResult:
    """`op` ("PUT" or "GET") with `clients` concurrent keep-alive connections, bounded by count and time."""
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.api}/v8/artifacts/{{}}?slug={server.team}"
    if op == "PUT":
        work = [(secrets.token_hex(8), body) for body in bodies]
        stored: list[tuple[str, bytes]] = []
    else:
        have = server.stored[(size, clients)]
        work = [have[i % len(have)] for i in range(COUNT_BOUND[size])]
    position = 0
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def warm() -> None:
            async with session.get(f"{server.api}/v8/artifacts/status") as response:
                await response.read()

        # `clients` concurrent status requests open every connection outside the timing
        await asyncio.gather(*(warm() for _ in range(clients)))

        async def client(deadline: float) -> int:
            nonlocal position
            done = 0
            while position < len(work) and time.perf_counter() < deadline:
                key, body = work[position]
                position += 1
                if op == "PUT":
                    async with session.put(
                        url.format(key),
                        data=body,
                        headers={"Content-Type": "application/octet-stream", "x-artifact-duration": "100"},
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{server.name} PUT {key} → {response.status}")
                    stored.append((key, body))
                else:
                    async with session.get(url.format(key)) as response:
                        got = await response.read()
                        if response.status != 200 or got != body:
                            raise RuntimeError(
                                f"{server.name} GET {key} → {response.status}, {len(got)} bytes"
                            )
                done += 1
            return done

        cpu = server.cpu_seconds()
        started = time.perf_counter()
        counts = await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu
    if op == "PUT":
        server.stored[(size, clients)] = stored
    return RowResult(sum(counts), elapsed, cpu)


def fsync_rate(directory: Path, seconds: float = 1.0) -> float:
    """Small files written, fsynced and renamed into place per second from one thread, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    data, count, started = os.urandom(KIB), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        temp, final = directory / f"t{count}", directory / f"f{count}"
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temp.rename(final)
        count += 1
    return count / (time.perf_counter() - started)


SYNC_CALLS = ("fsync", "fdatasync", "syncfs", "sync_file_range")


def count_syncs(server: Server, size: int, seconds: float) -> tuple[int, dict[str, int]]:
    """(PUTs, sync system calls by name) for one 1-client PUT row with strace counting the server's sync calls.
    Untimed diagnostic: strace slows the server, the count is exact."""
    with tempfile.NamedTemporaryFile(prefix="strace-", suffix=".txt") as out:
        strace = subprocess.Popen(
            ["strace", "-f", "-c", "-e", f"trace={','.join(SYNC_CALLS)}", "-o", out.name,
             "-p", str(server.process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached to every thread
        try:
            bodies = [os.urandom(size) for _ in range(COUNT_BOUND[size])]
            result = asyncio.run(run_row(server, "PUT", size, 1, bodies, seconds))
            time.sleep(0.5)  # syncs a request started before its answer are in; background ones may follow
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(30)
        calls: dict[str, int] = {}
        for line in Path(out.name).read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in SYNC_CALLS:
                calls[parts[-1]] = int(parts[3])
    return result.ops, calls


ROWS = [(op, label, clients) for label in SIZES for op in ("PUT", "GET") for clients in CLIENTS]
# PUT before GET of the same size: the GETs read what the PUTs stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="alternated repetitions (median over them)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time bound per row, server and repetition"
    )
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated subset, e.g. put-1k-1,get-1m-32 (default: all 8); a GET row runs its PUT row too",
    )
    parser.add_argument(
        "--peer-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "mic-bench"
        / f"{PEER_PACKAGE}-{PEER_VERSION}",
        help="where the peer is (or gets) installed with npm",
    )
    parser.add_argument("--memory-budget", help="micd's memory tier (0: every read from the disk tier)")
    parser.add_argument(
        "--micd-wrapper",
        default="",
        help="diagnostic: a command prefix for the daemon, e.g. eatmydata (its fsyncs become no-ops)",
    )
    parser.add_argument(
        "--count-syncs",
        action="store_true",
        help="after the timed runs, count each server's fsync-family calls per PUT with strace (1 client)",
    )
    args = parser.parse_args()
    wanted = {name.strip().lower() for name in args.rows.split(",") if name.strip()}
    rows = [
        row
        for row in ROWS
        if not wanted
        or f"{row[0]}-{row[1]}-{row[2]}".lower() in wanted
        or (row[0] == "PUT" and f"get-{row[1]}-{row[2]}" in wanted)
    ]
    cli = peer_cli(args.peer_dir)
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, str, int], dict[str, list[RowResult]]] = {
        row: {"micd": [], "peer": []} for row in rows
    }
    syncs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="turbo-bench-") as tmp:
        fsyncs = fsync_rate(Path(tmp) / "fsync")
        extra = ["--memory-budget", args.memory_budget] if args.memory_budget else []
        micd = start_micd(Path(tmp) / "micd", *extra, wrapper=args.micd_wrapper.split())
        try:
            peer = start_peer(cli, Path(tmp) / "peer")
            try:
                for rep in range(args.reps):
                    for op, label, clients in rows:
                        size = SIZES[label]
                        bodies = [os.urandom(size) for _ in range(COUNT_BOUND[size])] if op == "PUT" else []
                        order = (micd, peer) if rep % 2 == 0 else (peer, micd)
                        for server in order:
                            result = asyncio.run(run_row(server, op, size, clients, bodies, args.seconds))
                            results[(op, label, clients)][server.name].append(result)
                            print(
                                f"rep {rep + 1} {op} {label} x{clients} {server.name}: {result.rate:,.0f} ops/s "
                                f"({result.ops} ops, {result.cpu * 1e3 / result.ops:.2f} ms CPU/op)",
                                file=sys.stderr,
                            )
                        del bodies
                if args.count_syncs:
                    for server in (micd, peer):
                        for label, size in SIZES.items():
                            puts, calls = count_syncs(server, size, args.seconds)
                            each = ", ".join(f"{n / puts:.2f} {name}" for name, n in sorted(calls.items()))
                            syncs.append(
                                f"{server.name} PUT {label} x1 under strace: {puts} PUTs, "
                                f"{sum(calls.values()) / puts:.2f} sync calls per PUT ({each or 'none'})"
                            )
            finally:
                peer.stop()
        finally:
            micd.stop()
    load_after = os.getloadavg()[0]
    tiers = "disk tier only" if args.memory_budget == "0" else "memory + disk tiers"
    if args.micd_wrapper:
        tiers += f", run under `{args.micd_wrapper}`"
    print(
        f"Turborepo API, micd ({tiers}) vs {PEER_PACKAGE} {PEER_VERSION} (local storage); median of {args.reps} "
        f"alternated repetitions, each row ≤ {args.seconds:g} s per server"
    )
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after; "
          f"this filesystem: {fsyncs:,.0f} fsynced 1 KiB file writes/s from one thread")  # fmt: skip
    print(
        "| op | size | clients | micd ops/s | peer ops/s | micd ÷ peer (range per rep) | CPU ms/op micd / peer |"
    )
    print("|---|---|---|---|---|---|---|")
    for (op, label, clients), by_server in results.items():
        mine, theirs = by_server["micd"], by_server["peer"]
        m = statistics.median(r.rate for r in mine)
        p = statistics.median(r.rate for r in theirs)
        ratios = [a.rate / b.rate for a, b in zip(mine, theirs, strict=True)]
        cpu_m = statistics.median(r.cpu / r.ops for r in mine) * 1e3
        cpu_p = statistics.median(r.cpu / r.ops for r in theirs) * 1e3
        shown = "1 KiB" if label == "1k" else "1 MiB"
        print(
            f"| {op} | {shown} | {clients} | {m:,.0f} | {p:,.0f} | **{m / p:.2f}×** "
            f"({min(ratios):.2f}–{max(ratios):.2f}) | {cpu_m:.2f} / {cpu_p:.2f} |"
        )
    for line in syncs:
        print(line)


if __name__ == "__main__":
    main()
