"""The daemon's life: state dir, life lock, listeners, `ports.json`, idle timeout, signals and draining.

State dir layout (see architecture.md; one per session, or per workspace when no session is active):

    daemon.lock   flock'ed exclusively for the daemon's whole life, so a second daemon for the session
                  cannot start (it exits with status 3, "already running")
    start.lock    flock'ed by `mic daemon start` while it checks and spawns, so two starts make one daemon
    daemon.pid    the pid, written once the life lock is held
    ports.json    {"pid", "http_port", "grpc_port", …} written atomically (temp + fsync + rename) only after
                  both listeners answer a probe; removed first at shutdown
    token         the session token, mode 0600, kept across restarts so configured clients keep working
    env.json      every frontend's client environment, and each frontend's client files (e.g. bazelrc), 0600,
                  written before ports.json and removed at shutdown (micd/toolconfig.py)
    daemon.log    info and errors;  access.log: client-caused 4xx only

Shutdown (SIGTERM, SIGINT or idle timeout): remove ports.json, stop accepting and give in-flight requests a
grace period, stop gRPC, drain the S3 upload queue within `drain_timeout`, remove the pid file, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from micd import libc
from micd.app import (
    FRONTENDS,
    SERVER_LOGGER,
    Activity,
    GrpcServer,
    create_app,
    create_grpc_server,
    open_store,
)
from micd.auth import new_token
from micd.config import Config
from micd.metrics import Metrics
from micd.statedir import StatePaths, read_pid, write_json_atomic
from micd.toolconfig import remove_client_configs, write_client_configs
from mickernel.atomic import write_atomic
from mickernel.errors import MicError
from mickernel.locks import hold_lock

__all__ = [
    "AlreadyRunning",
    "load_or_create_token",
    "run_daemon",
]

PORTS_VERSION = 1
SHUTDOWN_GRACE = 5.0
READ_BUFSIZE = 1 << 20
IDLE_TRIM_AFTER = 1.0  # seconds without requests before freed heap memory goes back to the OS
HEAP_KEEP = 256 << 20  # freed heap glibc keeps for reuse while busy (IdleTrim gives it back when idle)
HEAP_MMAP_MIN = 32 << 20  # allocations below this come from the heap (glibc's largest allowed value)
HEAP_ARENAS = 2  # malloc arenas shared by all threads (glibc's default: 8 per core)
log = logging.getLogger("micd")


def keep_freed_heap() -> bool:
    """Let glibc reuse freed transfer buffers instead of returning them to the OS at once.

    By default a freed MiB-sized buffer is unmapped (or trimmed off the heap top), so the next one is fresh
    memory the kernel must fault in and zero page by page: reading a 64 MiB blob from the page cache then
    took ~40 ms instead of ~6 ms on the dev VM. With these settings the freed memory is reused; `IdleTrim`
    still hands it back once requests stop.

    Kept heap is per arena, and glibc gives each worker thread an arena of its own (up to 8 per core): buffers
    freed by one `to_thread` worker were kept apart from the next one's, multiplying what a loaded daemon held
    (issue 10: peak RSS under 200 clients). `HEAP_ARENAS` arenas shared by all threads keep one reusable pool.
    Returns whether glibc took every setting.
    """
    if libc.mallopt is None:
        return False
    settings = (
        (libc.M_ARENA_MAX, HEAP_ARENAS),
        (libc.M_MMAP_THRESHOLD, HEAP_MMAP_MIN),
        (libc.M_TRIM_THRESHOLD, HEAP_KEEP),
    )
    taken = [libc.mallopt(option, value) for option, value in settings]  # every one, even after a refusal
    return all(taken)


class IdleTrim:
    """Hands freed heap memory back to the OS once per idle period.

    After a burst of large transfers glibc keeps tens of MiB of freed buffers in its per-thread arenas; an idle
    per-session daemon should not hold them. One `malloc_trim(0)` when requests stop costs a few ms.
    """

    def __init__(self, activity: Activity, trim: Callable[[int], int] | None = None) -> None:
        self._activity = activity
        self._trim = trim if trim is not None else libc.malloc_trim
        self._trimmed_for = activity.last  # the activity stamp the last trim followed

    def tick(self) -> None:
        """Trim if the daemon has been idle for `IDLE_TRIM_AFTER` since activity we have not trimmed after."""
        if self._trim is None or self._activity.last == self._trimmed_for:
            return
        if self._activity.idle_for() >= IDLE_TRIM_AFTER:
            self._trimmed_for = self._activity.last
            self._trim(0)


class AlreadyRunning(MicError):
    """Another daemon holds this state dir's life lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        super().__init__(f"a daemon is already running for {state_dir} (pid {pid or 'unknown'})")


def load_or_create_token(path: Path) -> str:
    """Return the session token: reused if its file is private and non-empty, else created with mode 0600."""
    try:
        info = path.stat()
        token = path.read_text().strip()
        if token and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and info.st_uid == os.getuid():
            return token
        log.warning("token file %s is empty or readable by others; replacing it", path)
    except FileNotFoundError:
        pass
    token = new_token()
    write_atomic(path, token + "\n", mode=0o600)
    return token


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def configure_logging(paths: StatePaths, level: str, *, echo: bool) -> None:
    """Log to daemon.log, client errors to access.log; `echo` also logs to stderr (foreground run)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("micd")
    root.setLevel(level)
    root.handlers.clear()
    handlers: list[logging.Handler] = [logging.FileHandler(paths.log)]
    if echo:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    access = logging.getLogger("micd.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.handlers.clear()
    access_handler = logging.FileHandler(paths.access_log)
    access_handler.setFormatter(fmt)
    access.addHandler(access_handler)


async def _probe(http_port: int, grpc_port: int) -> None:
    """Fail unless both listeners answer: ports.json must never name a port that does not serve."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{http_port}/healthz") as response:
            if response.status != 200:
                raise RuntimeError(f"/healthz answered {response.status} during startup")
    # grpc core honours http_proxy unless told not to: a proxy setting must not make our own probe fail
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)


async def _wait_for_stop(stop: asyncio.Event, activity: Activity, idle_timeout: float) -> str:
    """Return why the daemon stops: a signal or the idle timeout. Trims the heap when requests pause."""
    tick = min(IDLE_TRIM_AFTER / 2, idle_timeout / 4) if idle_timeout > 0 else IDLE_TRIM_AFTER / 2
    trim = IdleTrim(activity)
    while not stop.is_set():
        if idle_timeout > 0 and activity.idle_for() >= idle_timeout:
            return f"idle for {idle_timeout:g}s"
        trim.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
    return "signal"


async def serve(config: Config, paths: StatePaths, *, on_ready: Callable[[dict[str, Any]], None]) -> None:
    """Run the daemon until a signal or the idle timeout; the caller holds the life lock."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    token = await asyncio.to_thread(load_or_create_token, paths.token)
    metrics = Metrics()
    activity = Activity()
    store = await open_store(config, metrics)
    runner: web.AppRunner | None = None
    grpc_server: GrpcServer | None = None
    client_files: list[Path] = []
    try:
        app = create_app(store, config, token=token, metrics=metrics, activity=activity)
        # A 1 MiB read buffer (2 MiB high-water) lets the socket keep filling while the disk tier hashes and
        # writes the previous batch in a thread: ~20% more ingest than aiohttp's 64 KiB, memory still bounded.
        runner = web.AppRunner(
            app,
            access_log=None,
            logger=app[SERVER_LOGGER],  # aiohttp logs every unparsable request: rate-limited
            shutdown_timeout=SHUTDOWN_GRACE,
            read_bufsize=READ_BUFSIZE,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=False)
        await site.start()
        http_port = runner.addresses[0][1]
        grpc_server = create_grpc_server(store, config, token=token, activity=activity)
        grpc_port = grpc_server.server.add_insecure_port("127.0.0.1:0")
        await grpc_server.server.start()
        await _probe(http_port, grpc_port)
        info = {
            "version": PORTS_VERSION,
            "pid": os.getpid(),
            "http_port": http_port,
            "grpc_port": grpc_port,
            "http": f"http://127.0.0.1:{http_port}",
            "grpc": f"grpc://127.0.0.1:{grpc_port}",
            "session": config.session,
            "state_dir": str(paths.root),
            "started_at": time.time(),
        }
        # Client configuration before ports.json: whoever sees ports.json (the readiness signal) finds it too.
        client_files = await asyncio.to_thread(
            write_client_configs,
            paths.root,
            FRONTENDS,
            http_port=http_port,
            grpc_port=grpc_port,
            token=token,
            settings=config.tool_settings,
        )
        await asyncio.to_thread(write_json_atomic, paths.ports, info)
        log.info("serving http on %s and grpc on %s (pid %d)", info["http"], info["grpc"], os.getpid())
        on_ready(info)
        reason = await _wait_for_stop(stop, activity, config.idle_timeout)
        log.info("stopping: %s", reason)
    finally:
        _unlink(paths.ports)  # first, so no client picks up a daemon that is going away
        remove_client_configs(client_files)
        if runner is not None:
            await runner.cleanup()
        if grpc_server is not None:
            await grpc_server.stop(SHUTDOWN_GRACE)
        started = time.monotonic()
        await store.close(config.drain_timeout)
        log.info("store closed in %.2fs; exiting", time.monotonic() - started)


def run_daemon(config: Config, *, echo: bool, on_ready: Callable[[dict[str, Any]], None]) -> int:
    """Take the life lock and run the daemon in this process; returns the exit code.

    Raises:
        AlreadyRunning: another daemon serves this state dir.

    """
    paths = StatePaths(config.state_dir).ensure()
    with hold_lock(paths.lock, blocking=False) as acquired:
        if not acquired:
            raise AlreadyRunning(paths.root, read_pid(paths.pid))
        # We own the state dir now: whatever ports.json and env.json are left belong to a dead daemon (kill -9).
        _unlink(paths.ports)
        _unlink(paths.env)
        write_atomic(paths.pid, f"{os.getpid()}\n", mode=0o644)
        configure_logging(paths, config.log_level, echo=echo)
        keep_freed_heap()
        try:
            asyncio.run(serve(config, paths, on_ready=on_ready))
        finally:
            _unlink(paths.pid)
    return 0
