"""Client API for `mic`: find, start, stop and query the session daemon through its state dir.

`mic` reaches micd only through this module. Everything here is synchronous (a CLI makes one call at a time)
and talks to the daemon the way any client would: files in the state dir, then HTTP with the session token.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micd.config import KEYS, Config
from micd.statedir import StatePaths, is_alive, read_pid
from mickernel.errors import MicError
from mickernel.locks import hold_lock
from mickernel.spawn import spawn_detached

__all__ = [
    "DaemonError",
    "DaemonInfo",
    "fetch_json",
    "find_running",
    "read_environment",
    "run_foreground",
    "start_daemon",
    "stop_daemon",
]

EXIT_ALREADY_RUNNING = 3

_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Opens daemon URLs directly: an `http_proxy` setting must neither break reaching 127.0.0.1 nor receive
the session token."""


class DaemonError(MicError):
    """The daemon could not be started, stopped or reached; the message says what to look at."""


@dataclass(frozen=True)
class DaemonInfo:
    """What ports.json says about a running daemon."""

    pid: int
    http: str
    grpc: str
    http_port: int
    grpc_port: int
    started_at: float
    state_dir: Path

    @property
    def uptime(self) -> float:
        """Seconds since the daemon wrote ports.json."""
        return max(0.0, time.time() - self.started_at)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json` output."""
        return {
            "pid": self.pid,
            "http": self.http,
            "grpc": self.grpc,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "uptime_seconds": round(self.uptime, 1),
            "state_dir": str(self.state_dir),
            "token_file": str(StatePaths(self.state_dir).token),
        }


def _alive(pid: int) -> bool:
    """Like `is_alive`, but a zombie (a daemon we spawned that exited unreaped) counts as dead."""
    if not is_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_ports(paths: StatePaths) -> DaemonInfo | None:
    try:
        data = json.loads(paths.ports.read_text())
        return DaemonInfo(
            pid=int(data["pid"]),
            http=data["http"],
            grpc=data["grpc"],
            http_port=int(data["http_port"]),
            grpc_port=int(data["grpc_port"]),
            started_at=float(data["started_at"]),
            state_dir=paths.root,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_token(config: Config) -> str:
    try:
        return StatePaths(config.state_dir).token.read_text().strip()
    except OSError as exc:
        raise DaemonError(f"cannot read the session token in {config.state_dir}: {exc.strerror}") from exc


def read_environment(config: Config) -> dict[str, str]:
    """Every tool's client environment the daemon of `config.state_dir` wrote (`env.json`, see
    micd/toolconfig.py): what activation exports. Raises DaemonError when there is none or it is unreadable."""
    path = StatePaths(config.state_dir).env
    try:
        document = json.loads(path.read_text())
        env = document["env"]
        if document.get("version") != 1 or not all(isinstance(v, str) for v in env.values()):
            raise ValueError(f"unsupported version or values in {path}")
        return {str(name): value for name, value in env.items()}
    except FileNotFoundError:
        raise DaemonError(f"no daemon environment in {config.state_dir} (is the daemon running?)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DaemonError(f"cannot read the daemon environment {path}: {exc}") from exc


def _healthy(info: DaemonInfo, timeout: float = 2.0) -> bool:
    try:
        with _LOCAL.open(f"{info.http}/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def find_running(config: Config) -> DaemonInfo | None:
    """Find the daemon serving `config.state_dir`: ports.json present, its pid alive, /healthz answering."""
    info = _read_ports(StatePaths(config.state_dir))
    if info is None or not _alive(info.pid) or not _healthy(info):
        return None
    return info


def fetch_json(config: Config, path: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET a JSON endpoint of the running daemon with the session token."""
    info = find_running(config)
    if info is None:
        raise DaemonError(f"no daemon is running for {config.state_dir} (start one with `mic daemon start`)")
    request = urllib.request.Request(
        f"{info.http}{path}", headers={"Authorization": f"Bearer {read_token(config)}"}
    )
    try:
        with _LOCAL.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise DaemonError(f"daemon answered {exc.code} for {path}") from exc
    except (OSError, ValueError) as exc:
        raise DaemonError(f"cannot read {path} from the daemon at {info.http}: {exc}") from exc


def _flag_args(flags: Mapping[str, object]) -> list[str]:
    by_attr = {key.attr: key for key in KEYS}
    args: list[str] = []
    for attr, value in flags.items():
        if value is not None:
            args += [by_attr[attr].flag, str(value)]
    return args


def run_foreground(flags: Mapping[str, object], *, as_json: bool) -> None:
    """Replace this process with `micd run` (foreground, prints endpoints, signals reach the daemon)."""
    args = [sys.executable, "-m", "micd.main", "run", *(["--json"] if as_json else []), *_flag_args(flags)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


def _daemon_holds_lock(paths: StatePaths) -> bool:
    """True while some daemon process holds this state dir's `daemon.lock` (the kernel drops it when the
    daemon dies, so leftover pid files cannot fool this). Probing takes the lock for an instant: a daemon
    starting at that moment exits as "already running", which `start_daemon` retries."""
    with hold_lock(paths.lock, blocking=False) as acquired:
        return not acquired


def _is_micd(pid: int) -> bool:
    """True if `pid` runs micd (guards against a pid reused by another program after the daemon died)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"micd" in handle.read()
    except OSError:
        return False


def _log_tail(paths: StatePaths, lines: int = 15) -> str:
    try:
        return "\n".join(paths.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no daemon.log)"


def start_daemon(
    config: Config, flags: Mapping[str, object], *, timeout: float = 30.0
) -> tuple[DaemonInfo, bool]:
    """Start a detached daemon unless one runs; returns (info, started_now).

    Concurrent callers serialise on `start.lock`, so exactly one daemon results and the others report it.
    """
    paths = StatePaths(config.state_dir).ensure()
    with hold_lock(paths.start_lock, blocking=True):
        running = find_running(config)
        if running is not None:
            return running, False
        # The state dir and session are passed explicitly so the child cannot resolve them differently.
        pinned = {**flags, "state_dir": str(config.state_dir), "session": config.session}
        command = [sys.executable, "-m", "micd.main", "run", "--detached", *_flag_args(pinned)]
        child = spawn_detached(command, log=paths.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _read_ports(paths)
            if info is not None and _alive(info.pid) and _healthy(info):
                return info, info.pid == child.pid
            code = child.poll()
            if code == EXIT_ALREADY_RUNNING:
                # Another daemon holds daemon.lock: one starting (its ports.json will come) or one shutting
                # down (it removed ports.json first). Once the lock is free, start ours after all.
                if info is None and not _daemon_holds_lock(paths):
                    child = spawn_detached(command, log=paths.log)
            elif code is not None:
                raise DaemonError(
                    f"micd exited with status {code} while starting; daemon.log says:\n{_log_tail(paths)}"
                )
            time.sleep(0.02)
        raise DaemonError(
            f"micd did not become ready within {timeout:g}s; daemon.log says:\n{_log_tail(paths)}"
        )


def stop_daemon(config: Config, *, timeout: float = 60.0) -> int | None:
    """SIGTERM the daemon and wait for it to exit (it drains uploads first); returns its pid, or None."""
    paths = StatePaths(config.state_dir)
    info = _read_ports(paths)
    pid = info.pid if info is not None else read_pid(paths.pid)
    # The files outlive a daemon killed by SIGKILL or the OOM killer, and its pid may belong to another
    # program by now: signal only a micd process while a daemon holds this state dir's lock.
    if pid is None or not _alive(pid) or not _is_micd(pid) or not _daemon_holds_lock(paths):
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.02)
    raise DaemonError(f"daemon pid {pid} did not exit within {timeout:g}s after SIGTERM (see {paths.log})")
