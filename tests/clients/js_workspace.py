"""Helpers of the JS real-client tests (nx, turbo): a fixture workspace copied into a git repository, the
clients' environment taken from the daemon alone, timed runs, and the outputs to compare across builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.clients.daemon import Daemon
from tests.fixtures.tools import NODE_CLIENTS

__all__ = ["Run", "client_env", "outputs", "run", "workspace"]

_TOOL_PREFIXES = ("NX_", "TURBO_")


def workspace(fixture: Path, target: Path, *, node_modules: bool = False) -> Path:
    """Copy `fixture` to `target` and commit it to a fresh git repository (both clients hash with git).

    With `node_modules`, link the installed clients in (nx runs only from the workspace's own installation).
    """
    shutil.copytree(fixture, target)
    if node_modules:
        (target / "node_modules").symlink_to(NODE_CLIENTS / "node_modules")
    identity = ["-c", "user.name=mic tests", "-c", "user.email=tests@mic.invalid"]
    for args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "fixture"]):
        subprocess.run(["git", *args], cwd=target, check=True, capture_output=True)
    return target


def client_env(daemon: Daemon, **hygiene: str) -> dict[str, str]:
    """The environment of a shell activated for `daemon`: ours without any NX_*/TURBO_* of the machine, plus
    the daemon's `env.json`, plus `hygiene` (test-only switches such as NX_DAEMON=false, no cache config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_TOOL_PREFIXES)}
    return {**env, **daemon.client_env(), **hygiene}


@dataclass
class Run:
    output: str
    seconds: float


def run(args: list[str], cwd: Path, env: dict[str, str]) -> Run:
    """Run a client to completion (it must succeed); stdout and stderr together, and the wall time."""
    started = time.monotonic()
    done = subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}"
    return Run(done.stdout, seconds)


def outputs(root: Path) -> dict[str, bytes]:
    """Every file under the packages' `dist` folders, by path relative to `root`."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.glob("packages/*/dist/**/*"))
        if path.is_file()
    }
