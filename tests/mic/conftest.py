"""Fixtures for mic tests: a store of each kind (local directory, moto S3) and a CLI runner bound to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from mic.cli import main
from mic.objects import Project
from mic.objectstore import open_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def store_env(request, tmp_path, monkeypatch):
    """Point mic at a fresh store of each kind via MIC_* env vars; returns the env dict (also for subprocesses)."""
    if request.param == "local":
        env = {"MIC_STORE_URL": f"file://{tmp_path / 'store'}"}
    else:
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        env = {"MIC_STORE_URL": f"s3://{bucket}/t-{uuid.uuid4().hex[:6]}", "MIC_S3_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def local_store_env(tmp_path, monkeypatch):
    env = {"MIC_STORE_URL": f"file://{tmp_path / 'store'}"}
    monkeypatch.setenv("MIC_STORE_URL", env["MIC_STORE_URL"])
    return env


class Mic:
    """Runs `mic` in process (fast) with a working directory; `json()` parses --json output."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.runner = CliRunner()

    def __call__(self, cwd: Path, *args: str, code: int = 0):
        self.monkeypatch.chdir(cwd)
        result = self.runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, (args, result.output, result.stderr if hasattr(result, "stderr") else "")
        return result

    def json(self, cwd: Path, *args: str, code: int = 0):
        return json.loads(self(cwd, *args, "--json", code=code).stdout)


@pytest.fixture
def mic(monkeypatch):
    return Mic(monkeypatch)


@pytest.fixture
async def project(tmp_path):
    """Project "p" in a fresh local store at `tmp_path/store` (modules testing every store kind define their own)."""
    store = open_store(f"file://{tmp_path / 'store'}")
    p = Project(store, "p")
    await p.create(1)
    yield p
    await store.close()


def run_mic(cwd: Path, *args: str, env_extra: dict[str, str] | None = None, timeout: float = 60):
    """Run the real `mic` in a subprocess (crash and concurrency tests)."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mic", *args],
        check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
