"""The session state dir: its file names, and reading and writing its small files.

Shared by the daemon (`micd.lifecycle`) and the client `mic` uses (`micd.client`), and deliberately light:
no aiohttp, grpc or tiers, so every `mic` command starts fast.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mickernel.atomic import write_atomic

__all__ = ["StatePaths", "is_alive", "read_pid", "write_json_atomic"]


@dataclass(frozen=True)
class StatePaths:
    """The files of one session's state dir."""

    root: Path

    @property
    def lock(self) -> Path:
        """Held by the daemon for its whole life."""
        return self.root / "daemon.lock"

    @property
    def start_lock(self) -> Path:
        """Held by `mic daemon start` while it checks and spawns."""
        return self.root / "start.lock"

    @property
    def pid(self) -> Path:
        """The daemon's pid."""
        return self.root / "daemon.pid"

    @property
    def ports(self) -> Path:
        """Endpoints, written once serving."""
        return self.root / "ports.json"

    @property
    def env(self) -> Path:
        """Every frontend's client environment (micd/toolconfig.py), 0600: it may carry the token."""
        return self.root / "env.json"

    @property
    def token(self) -> Path:
        """The session token (0600)."""
        return self.root / "token"

    @property
    def log(self) -> Path:
        """The daemon log."""
        return self.root / "daemon.log"

    @property
    def access_log(self) -> Path:
        """Client-caused 4xx only."""
        return self.root / "access.log"

    def ensure(self) -> StatePaths:
        """Create the state dir (mode 0700) if needed; one that exists (say, a MIC_STATE_DIR made by hand) loses
        group and other access too: it holds the session token, the bazelrc and the logs."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.root.stat()
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.chmod(self.root, stat.S_IMODE(st.st_mode) & 0o700)
        return self


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Durably replace `path` with `data` as indented JSON (mode 0644: ports.json holds no secret)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode=0o644)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """Tell whether a process with `pid` exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
