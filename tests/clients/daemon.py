"""`Daemon`: a real `micd run` subprocess for the real-client tests, with its state and cache dirs in tmp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from micd.client import read_environment
from micd.config import load_config

__all__ = ["Daemon"]


class Daemon:
    """`micd run` as a subprocess with its state and cache dirs in tmp; stopped by PID with SIGTERM."""

    def __init__(self, state_dir: Path, cache_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.cache_dir = cache_dir
        self.env = {
            **os.environ,
            "MIC_STATE_DIR": str(state_dir),
            "MIC_CACHE_DIR": str(cache_dir),
            "MIC_IDLE_TIMEOUT": "0",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.ports: dict = {}

    def start(self) -> Daemon:
        ports = self.state_dir / "ports.json"
        # A file, not a pipe: a chatty daemon must never block on a full pipe nobody reads.
        err = self.cache_dir.parent / f"micd-{time.monotonic_ns()}.err"
        with open(err, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "micd.main", "run", "--json"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 30
        while not ports.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"micd did not start:\n{err.read_text()[-4000:]}")
            time.sleep(0.05)
        self.ports = json.loads(ports.read_text())
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=150)  # past MIC_DRAIN_TIMEOUT: a slow drain is not cut short
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stats(self) -> dict:
        token = (self.state_dir / "token").read_text().strip()
        request = urllib.request.Request(
            f"{self.ports['http']}/stats", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def client_env(self) -> dict[str, str]:
        """The tools' environment as activation exports it: `env.json`, read by the reader `mic` uses."""
        env = {"HOME": os.environ["HOME"], "MIC_STATE_DIR": str(self.state_dir)}
        return read_environment(load_config(cwd=self.state_dir, env=env))
