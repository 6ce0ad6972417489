"""The client side of the watcher: ask it what changed, start it when there is none, and scan accordingly.

`scan_workspace` is what `mic status` and `mic land` call. It never trusts the watcher for more than the watcher
vouches for: no answer, an error, an unknown generation or a `FULL` report all mean the full scan, and the token
saved with the index is always one obtained *before* the scan that the index reflects.
"""

from __future__ import annotations

import marshal
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mic.statcache import Index, ScanResult, Token, scan, scan_paths
from mic.watch import FULL, LOG, SOCKET

if TYPE_CHECKING:
    from micd.config import Config

__all__ = ["WatchSettings", "ask", "scan_workspace", "start"]

_ANSWER_TIMEOUT = 2.0  # seconds for a running watcher's answer
_START_TIMEOUT = 10.0  # seconds for a started watcher to listen (it first adds a watch to every directory)


@dataclass(frozen=True)
class WatchSettings:
    """`enabled`; a watcher is started only for workspaces with at least `min_files` files; it exits after
    `idle_timeout` seconds without a request."""

    enabled: bool = True
    min_files: int = 10_000
    idle_timeout: float = 1800.0

    @classmethod
    def from_config(cls, config: Config) -> WatchSettings:
        return cls(config.watch and sys.platform == "linux", config.watch_min_files, config.watch_idle_timeout)


def ask(dot: Path, token: Token | None) -> tuple[str, int, list[str]]:
    """Ask the watcher of `dot` (a `.mic`) for the paths changed since `token`; raise OSError/ValueError if none
    answers properly."""
    dot_fd = os.open(dot, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_ANSWER_TIMEOUT)
            conn.connect(f"/proc/self/fd/{dot_fd}/{SOCKET}")
            gen, seq = token if token is not None else ("-", 0)
            conn.sendall(f"{gen} {seq}\n".encode())
            chunks = []
            while chunk := conn.recv(1 << 20):
                chunks.append(chunk)
    finally:
        os.close(dot_fd)
    answer = marshal.loads(b"".join(chunks))
    if not (
        isinstance(answer, tuple) and len(answer) == 3 and isinstance(answer[0], str) and isinstance(answer[1], int)
        and isinstance(answer[2], list) and all(isinstance(p, str) for p in answer[2])
    ):
        raise ValueError(f"malformed watcher answer {answer!r:.200}")
    return answer


def start(root: Path, idle_timeout: float) -> None:
    """Start the watcher of `root`, detached (it forks; its first process exits once the watcher listens)."""
    import subprocess  # not at the top: `mic status` imports this module and rarely starts a watcher

    from mickernel.spawn import spawn_detached

    argv = [sys.executable, "-m", "mic.watch", os.fspath(root), str(idle_timeout)]
    proc = spawn_detached(argv, log=root / ".mic" / LOG, cwd="/")
    try:
        code = proc.wait(timeout=_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()  # only the first process: the watcher itself goes on and serves the next status
        proc.wait()
        raise TimeoutError(f"the watcher of {root} was not ready within {_START_TIMEOUT}s") from None
    if code != 0:
        raise OSError(f"the watcher of {root} failed to start (see .mic/{LOG})")


def _debug(message: str) -> None:
    import logging

    logging.getLogger("mic.watch").debug(message)


def _ask_or_start(root: Path, index: Index, settings: WatchSettings) -> tuple[str, int, list[str]] | None:
    dot = root / ".mic"
    try:
        return ask(dot, index.token)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        first = exc
    if not isinstance(first, (FileNotFoundError, ConnectionRefusedError)):
        _debug(f"watcher of {root} did not answer ({first!r}); full scan")
        return None
    if index.file_count() < settings.min_files:
        return None
    try:
        start(root, settings.idle_timeout)
        deadline = time.monotonic() + _START_TIMEOUT  # if another watcher won the lock, it may still be starting
        while True:
            try:
                return ask(dot, index.token)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    except (OSError, ValueError, EOFError, TypeError) as exc:  # no watcher costs speed, never the status
        _debug(f"could not start the watcher of {root} ({exc!r}); full scan")
        return None


def scan_workspace(root: Path, index: Index, settings: WatchSettings) -> ScanResult:
    """Scan the workspace: only the watcher's reported paths when the index's token is the watcher's, else in
    full. Starts the watcher (for the next status) when none runs and the tree is large enough."""
    if not settings.enabled:
        return scan(root, index)
    answer = _ask_or_start(root, index, settings)
    if answer is None:
        return scan(root, index)
    gen, seq, paths = answer
    if index.token is not None and index.token[0] == gen and FULL not in paths:
        result = scan_paths(root, index, paths)
    else:
        result = scan(root, index)
    index.token = (gen, seq)
    return result
