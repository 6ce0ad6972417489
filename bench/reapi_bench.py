"""REAPI cache benchmark: micd vs BuildGrid, same run, same client code (a grpc.aio client in this process).

    python bench/reapi_bench.py [--seconds 3] [--repeat 3] [--bgvenv /tmp/bgvenv] [--storage memory|disk]

Phases, each with 1 and 32 concurrent clients, each bounded by --seconds and a maximum op count:
FindMissingBlobs of 1,000 digests (half present), BatchUpdateBlobs and BatchReadBlobs of one 4 KiB blob per
call, ByteStream Write and Read of a 64 MiB blob (1 MiB messages; each writer uploads a distinct blob).
Prints ops/s per server and the micd/BuildGrid ratio (targets: ≥ 3× on the small-blob paths, ≥ 1× on
ByteStream).

Each repetition starts every server afresh and measures them one after another (the order rotates between
repetitions, so drift in the shared machine's load does not favour one server); the table shows medians.

micd runs as the real daemon (`python -m micd.main run`: memory + disk tiers in a temp cache dir, token auth).
BuildGrid 0.4.4 runs from its own venv (created with `pip install buildgrid` when --bgvenv has no `bgd`) with
the CAS + AC-only config of shared/docs/real-clients.md: `!lru-storage` (in memory, BuildGrid's fastest store)
or `!disk-storage` with --storage disk. Servers bind 127.0.0.1 only and are stopped by PID at the end.

"floor" is the least any Python grpcio cache server can do per call: grpc.aio servicers over a dict, with no
verification, auth, metrics or disk. Its ratio to BuildGrid bounds what micd can reach on this machine with
the same client (the client's own per-call cost and the grpcio stack are in every row).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import bytestream_pb2_grpc as bs_grpc
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2_grpc as re_grpc

SMALL = 4096
BATCH = 64
LARGE = 64 << 20
MESSAGE = 1 << 20
LARGE_SOLO_OPS = 4  # 64 MiB transfers by the single client (2 left the rows at the mercy of one hiccup)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
BUILDGRID_CONFIG = """
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
storages:
  - {storage} &main-storage
    {storage_arg}
caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 100000
    allow-updates: true
instances:
  - name: ""
    services:
      - !action-cache
        cache: *main-action
      - !cas
        storage: *main-storage
      - !bytestream
        storage: *main-storage
thread-pool-size: 40
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass
class Server:
    name: str
    address: str
    metadata: tuple[tuple[str, str], ...]
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_micd(tmp: Path) -> Server:
    state = tmp / "micd-state"
    env = {
        **os.environ,
        "MIC_STATE_DIR": str(state),
        "MIC_CACHE_DIR": str(tmp / "micd-cache"),
        "MIC_IDLE_TIMEOUT": "0",
        "MIC_MEMORY_BUDGET": "1GiB",
    }
    env.pop("MIC_S3_BUCKET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "micd.main", "run", "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 30
    while not (state / "ports.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("micd did not start")
        time.sleep(0.05)
    ports = json.loads((state / "ports.json").read_text())
    token = (state / "token").read_text().strip()
    return Server("micd", f"127.0.0.1:{ports['grpc_port']}", (("authorization", f"Bearer {token}"),), process)


async def serve_memory(port: int, token: str) -> None:
    """`--serve-memory`: micd's REAPI servicers and token interceptor over a memory-only TieredStore, i.e. the
    daemon's protocol path without the disk tier (isolates protocol cost from disk durability cost)."""
    from micd.app import create_grpc_server
    from micd.config import load_config
    from micd.tiers.memory import MemoryTier
    from micd.tiers.tiered import TieredStore

    store = TieredStore(memory=MemoryTier(budget=6 << 30, max_blob=LARGE + (1 << 20)))
    server = create_grpc_server(store, load_config(), token=token).server
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


class _FloorCas(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    async def FindMissingBlobs(self, request, context):
        return re_pb2.FindMissingBlobsResponse(
            missing_blob_digests=[d for d in request.blob_digests if d.hash not in self.blobs]
        )

    async def BatchUpdateBlobs(self, request, context):
        responses = []
        for r in request.requests:
            self.blobs[r.digest.hash] = r.data
            responses.append(re_pb2.BatchUpdateBlobsResponse.Response(digest=r.digest))
        return re_pb2.BatchUpdateBlobsResponse(responses=responses)

    async def BatchReadBlobs(self, request, context):
        return re_pb2.BatchReadBlobsResponse(
            responses=[
                re_pb2.BatchReadBlobsResponse.Response(digest=d, data=self.blobs[d.hash])
                for d in request.digests
            ]
        )


class _FloorByteStream(bs_grpc.ByteStreamServicer):
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    async def Write(self, request_iterator, context):
        parts, name = [], ""
        async for request in request_iterator:
            name = name or request.resource_name
            parts.append(request.data)
        self.blobs[name.split("/")[-2]] = b"".join(parts)
        return bs_pb2.WriteResponse(committed_size=sum(map(len, parts)))

    async def Read(self, request, context):
        data = self.blobs[request.resource_name.split("/")[-2]]
        for offset in range(0, len(data), MESSAGE):
            yield bs_pb2.ReadResponse(data=data[offset : offset + MESSAGE])


async def serve_floor(port: int) -> None:
    """`--serve-floor`: the cheapest cache a Python grpc.aio server can be (see the module docstring)."""
    from micd.app import new_grpc_server

    blobs: dict[str, bytes] = {}
    server = new_grpc_server()
    re_grpc.add_ContentAddressableStorageServicer_to_server(_FloorCas(blobs), server)
    bs_grpc.add_ByteStreamServicer_to_server(_FloorByteStream(blobs), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def start_floor() -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Server("floor", f"127.0.0.1:{port}", (), process)


def start_micd_memory() -> Server:
    port, token = free_port(), uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-memory", str(port), token],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Server("micd-mem", f"127.0.0.1:{port}", (("authorization", f"Bearer {token}"),), process)


def ensure_buildgrid(venv: Path) -> Path:
    bgd = venv / "bin" / "bgd"
    if not bgd.exists():
        print(f"creating {venv} and installing buildgrid (once, ~1 min)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "buildgrid"], check=True)
    return bgd


def start_buildgrid(tmp: Path, venv: Path, storage: str) -> Server:
    bgd = ensure_buildgrid(venv)
    port = free_port()
    if storage == "disk":
        kind, arg = "!disk-storage", f"path: {tmp / 'bgd-cas'}"
    else:
        kind, arg = "!lru-storage", "size: 6G"
    config = tmp / "bgd.yml"
    config.write_text(BUILDGRID_CONFIG.format(port=port, storage=kind, storage_arg=arg))
    log = open(tmp / "bgd.log", "w")
    process = subprocess.Popen(
        [str(bgd), "server", "start", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    return Server("BuildGrid", f"127.0.0.1:{port}", (), process)


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = re_grpc.ContentAddressableStorageStub(channel)
        while True:
            try:
                await stub.FindMissingBlobs(
                    re_pb2.FindMissingBlobsRequest(), metadata=server.metadata, timeout=2
                )
                return
            except grpc.aio.AioRpcError:
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} did not become ready") from None
                await asyncio.sleep(0.2)


class Client:
    """Stubs over a few channels; worker w uses channel w % n (one process, one event loop)."""

    def __init__(self, server: Server, channels: int = 4) -> None:
        self.metadata = server.metadata
        self.channels = [
            grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) for _ in range(channels)
        ]
        self.cas = [re_grpc.ContentAddressableStorageStub(c) for c in self.channels]
        self.bytestream = [bs_grpc.ByteStreamStub(c) for c in self.channels]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@dataclass
class Workload:
    """Pre-built requests and blobs, identical for both servers."""

    find_request: re_pb2.FindMissingBlobsRequest
    seed_request: re_pb2.BatchUpdateBlobsRequest
    small: list[re_pb2.BatchUpdateBlobsRequest]
    batches: list[re_pb2.BatchUpdateBlobsRequest]  # BATCH distinct 4 KiB blobs each
    large_base: bytes
    large: list[tuple[bytes, re_pb2.Digest]]  # (8-byte header, digest of header + base[8:])

    @classmethod
    def build(cls, small_ops: int, large_ops: int) -> Workload:
        present = [os.urandom(SMALL) for _ in range(500)]
        absent = [digest_of(os.urandom(SMALL)) for _ in range(500)]
        find = re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b) for b in present] + absent)
        seed = re_pb2.BatchUpdateBlobsRequest(
            requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(b), data=b) for b in present]
        )
        small = []
        for _ in range(small_ops):
            data = os.urandom(SMALL)
            small.append(
                re_pb2.BatchUpdateBlobsRequest(
                    requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(data), data=data)]
                )
            )
        batches = []
        for _ in range(small_ops // BATCH):
            blobs = [os.urandom(SMALL) for _ in range(BATCH)]
            batches.append(
                re_pb2.BatchUpdateBlobsRequest(
                    requests=[
                        re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(b), data=b) for b in blobs
                    ]
                )
            )
        base = os.urandom(LARGE)
        large = []
        for _ in range(large_ops):
            header = os.urandom(8)
            hasher = hashlib.sha256(header)
            hasher.update(memoryview(base)[8:])
            large.append((header, re_pb2.Digest(hash=hasher.hexdigest(), size_bytes=LARGE)))
        return cls(find, seed, small, batches, base, large)

    def write_requests(self, index: int):
        header, digest = self.large[index]
        data = header + self.large_base[8:]
        name = f"uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"
        for offset in range(0, LARGE, MESSAGE):
            yield bs_pb2.WriteRequest(
                resource_name=name if offset == 0 else "",
                write_offset=offset,
                data=data[offset : offset + MESSAGE],
                finish_write=offset + MESSAGE >= LARGE,
            )


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time (user + system) of the server process and its children so far."""
    total = 0.0
    for proc in (process, *process.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


@dataclass
class Result:
    ops_per_s: float
    ops: int
    cpu_per_op: float  # server CPU seconds per op

    def per_blob(self, blobs: int) -> Result:
        """The same measurement counted in blobs rather than calls."""
        return Result(self.ops_per_s * blobs, self.ops * blobs, self.cpu_per_op / blobs)


async def timed(
    op: Callable[[int, int], Awaitable[None]],
    clients: int,
    seconds: float,
    max_ops: int,
    limit: float,
    server: psutil.Process,
) -> Result:
    """Run `op(worker, i)` (i = 0, 1, … across workers) until `seconds` elapse or `max_ops` ops were started.
    `limit` bounds the whole phase."""
    issued = 0
    cpu = cpu_seconds(server)
    started = time.perf_counter()

    async def worker(w: int) -> None:
        nonlocal issued
        while time.perf_counter() - started < seconds and issued < max_ops:
            i = issued
            issued += 1
            await op(w, i)

    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(clients))), timeout=limit)
    elapsed = time.perf_counter() - started
    return Result(issued / elapsed, issued, (cpu_seconds(server) - cpu) / max(issued, 1))


async def measure(server: Server, work: Workload, seconds: float) -> dict[tuple[str, int], Result]:
    client = Client(server)
    md = client.metadata
    proc = psutil.Process(server.process.pid)
    out: dict[tuple[str, int], Result] = {}
    uploaded = 0  # work.small[:uploaded] are stored
    batches = 0  # work.batches[:batches] are stored
    written = 0  # work.large[:written] are stored
    try:
        await client.cas[0].BatchUpdateBlobs(work.seed_request, metadata=md)
        for clients in (1, 32):

            async def find(w: int, i: int) -> None:
                resp = await client.cas[w % 4].FindMissingBlobs(work.find_request, metadata=md)
                assert len(resp.missing_blob_digests) == 500

            base = uploaded

            async def update(w: int, i: int) -> None:
                resp = await client.cas[w % 4].BatchUpdateBlobs(work.small[base + i], metadata=md)
                assert resp.responses[0].status.code == 0

            async def read(w: int, i: int) -> None:
                wanted = work.small[i % uploaded].requests[0]
                resp = await client.cas[w % 4].BatchReadBlobs(
                    re_pb2.BatchReadBlobsRequest(digests=[wanted.digest]), metadata=md
                )
                assert resp.responses[0].data == wanted.data

            batch_base = batches

            async def update_batch(w: int, i: int) -> None:
                resp = await client.cas[w % 4].BatchUpdateBlobs(work.batches[batch_base + i], metadata=md)
                assert all(r.status.code == 0 for r in resp.responses)

            async def read_batch(w: int, i: int) -> None:
                wanted = work.batches[i % batches].requests
                resp = await client.cas[w % 4].BatchReadBlobs(
                    re_pb2.BatchReadBlobsRequest(digests=[r.digest for r in wanted]), metadata=md
                )
                assert [r.data for r in resp.responses] == [r.data for r in wanted]

            out[("FindMissingBlobs x1000", clients)] = await timed(
                find, clients, seconds, 1_000_000, 600, proc
            )
            room = (len(work.small) - uploaded) // (2 if clients == 1 else 1)
            out[("BatchUpdateBlobs 4 KiB", clients)] = result = await timed(
                update, clients, seconds, room, 600, proc
            )
            uploaded += result.ops
            out[("BatchReadBlobs 4 KiB", clients)] = await timed(read, clients, seconds, 1_000_000, 600, proc)
            room = (len(work.batches) - batches) // (2 if clients == 1 else 1)
            result = await timed(update_batch, clients, seconds, room, 600, proc)
            out[(f"BatchUpdate {BATCH}x4KiB /blob", clients)] = result.per_blob(BATCH)
            batches += result.ops
            result = await timed(read_batch, clients, seconds, 1_000_000, 600, proc)
            out[(f"BatchRead {BATCH}x4KiB /blob", clients)] = result.per_blob(BATCH)

        for clients in (1, 32):
            first, count = written, max(clients, LARGE_SOLO_OPS)

            async def write(w: int, i: int) -> None:
                resp = await client.bytestream[w % 4].Write(work.write_requests(first + i), metadata=md)
                assert resp.committed_size == LARGE

            async def read_large(w: int, i: int) -> None:
                _, digest = work.large[first + i % count]
                got = 0
                request = bs_pb2.ReadRequest(resource_name=f"blobs/{digest.hash}/{digest.size_bytes}")
                async for resp in client.bytestream[w % 4].Read(request, metadata=md):
                    got += len(resp.data)
                assert got == LARGE

            out[("ByteStream Write 64 MiB", clients)] = await timed(write, clients, 3600, count, 900, proc)
            written += count
            out[("ByteStream Read 64 MiB", clients)] = await timed(
                read_large, clients, 3600, count, 900, proc
            )
    finally:
        await client.close()
    return out


def median_results(runs: list[dict[tuple[str, int], Result]]) -> dict[tuple[str, int], Result]:
    """Per phase: the median ops/s and the median server CPU per op over the repetitions."""
    return {
        key: Result(
            statistics.median(run[key].ops_per_s for run in runs),
            sum(run[key].ops for run in runs),
            statistics.median(run[key].cpu_per_op for run in runs),
        )
        for key in runs[0]
    }


def report(results: dict[str, dict[tuple[str, int], Result]], args: argparse.Namespace) -> None:
    names = list(results)
    print(
        f"REAPI cache benchmark: medians of {args.repeat} repetitions, {args.seconds:g} s per small-blob phase; "
        f"BuildGrid 0.4.4 storage: {args.storage}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        "micd = the daemon (memory + disk tiers); micd-mem = the same servicers over a memory-only store; "
        "floor = grpc.aio over a dict (no checks): the bound for any Python grpcio server"
    )
    print(
        "ops/s: client-observed, one grpc.aio client process (4 channels) on the same 2 shared cores; "
        "cpu: server CPU ms per op (user+sys);"
    )
    print(
        "ratios vs BuildGrid: ops = ops/s / BuildGrid's, cpu = BuildGrid's cpu/op / ours (higher is better)"
    )
    peer = "BuildGrid" if "BuildGrid" in names else None
    ours = [n for n in names if n != peer]
    cols = "".join(f"{n + ' ops/s':>15}{'cpu':>8}" for n in names)
    if peer:
        cols += "".join(f"{n + ' ops':>13}{'cpu':>7}" for n in ours)
    header = f"{'phase':<26}{'clients':>8}{cols}"
    print(header)
    print("-" * len(header))
    for key in results[names[0]]:
        row = "".join(
            f"{results[n][key].ops_per_s:>15.1f}{results[n][key].cpu_per_op * 1000:>8.3f}" for n in names
        )
        if peer:
            theirs = results[peer][key]
            for n in ours:
                mine = results[n][key]
                ops = mine.ops_per_s / theirs.ops_per_s if theirs.ops_per_s else float("nan")
                cpu = theirs.cpu_per_op / mine.cpu_per_op if mine.cpu_per_op else float("nan")
                row += f"{ops:>12.2f}x{cpu:>6.2f}x"
        print(f"{key[0]:<26}{key[1]:>8}{row}")


async def measure_all(work: Workload, args: argparse.Namespace, rep: int) -> dict[str, dict]:
    """One repetition: start every server afresh, measure each in turn (order rotated by `rep`), stop them."""
    with tempfile.TemporaryDirectory(prefix="reapi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        servers = []
        try:
            servers.append(start_micd(tmp))
            servers.append(start_micd_memory())
            servers.append(start_floor())
            if not args.micd_only:
                servers.append(start_buildgrid(tmp, Path(args.bgvenv), args.storage))
            for server in servers:
                await wait_ready(server)
            results = {}
            shift = rep % len(servers)
            for server in servers[shift:] + servers[:shift]:
                print(f"repetition {rep + 1}: measuring {server.name}…", file=sys.stderr)
                results[server.name] = await measure(server, work, args.seconds)
        finally:
            for server in servers:
                server.stop()
    return {server.name: results[server.name] for server in servers}


async def amain(args: argparse.Namespace) -> None:
    print("building the workload (hashing 64 MiB blobs)…", file=sys.stderr)
    work = Workload.build(small_ops=args.small_ops, large_ops=LARGE_SOLO_OPS + 32)
    runs = [await measure_all(work, args, rep) for rep in range(args.repeat)]
    report({name: median_results([run[name] for run in runs]) for name in runs[0]}, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration bound of each small-blob phase")
    parser.add_argument("--small-ops", type=int, default=40_000, help="distinct 4 KiB blobs prepared")
    parser.add_argument("--bgvenv", default="/tmp/bgvenv", help="BuildGrid's own venv (created if missing)")
    parser.add_argument("--storage", choices=("memory", "disk"), default="memory", help="BuildGrid storage")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions (fresh servers each); medians shown"
    )
    parser.add_argument("--micd-only", action="store_true", help="skip BuildGrid")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-memory", nargs=2, metavar=("PORT", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_memory:
        asyncio.run(serve_memory(int(args.serve_memory[0]), args.serve_memory[1]))
    elif args.serve_floor:
        asyncio.run(serve_floor(args.serve_floor))
    else:
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
