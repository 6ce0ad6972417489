"""Real turbo 2.11 (npm, tests/clients/node) against a real `micd run` subprocess, configured only by the
daemon's `env.json`: a cold `turbo run build` uploads both tasks' outputs; after deleting `.turbo` (the local
cache), `node_modules/.cache` and the outputs, the rebuild is `FULL TURBO` with every task's cache source
`REMOTE` in the run summary, and the outputs are byte-identical. With signatures on (turbo.json
`remoteCache.signature` and a key), the hit needs the `x-artifact-tag` round trip, and under another key turbo
rejects the artifact and rebuilds. The workspace is tests/clients/turbo_ws (two npm workspaces)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import Run, client_env, outputs, run, workspace
from tests.fixtures.tools import require_node_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIXTURE = Path(__file__).parent / "turbo_ws"
PACKAGES = ("lib-a", "lib-b")
KEY = "a signature key of at least thirty-two bytes"


def _clear_local(ws: Path) -> None:
    """Everything turbo could restore from without the remote: its caches and the outputs themselves."""
    for path in [
        ws / ".turbo",
        ws / "node_modules" / ".cache",
        *(ws / "packages" / p / "dist" for p in PACKAGES),
    ]:
        shutil.rmtree(path, ignore_errors=True)


def _sources(ws: Path) -> dict[str, str]:
    """task id → cache source from the newest run summary (`--summarize`)."""
    summary = max((ws / ".turbo" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return {task["taskId"]: task["cache"].get("source") for task in json.loads(summary.read_text())["tasks"]}


def _build(turbo: str, ws: Path, env: dict[str, str]) -> Run:
    return run([turbo, "run", "build", "--summarize"], ws, env)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_turbo_is_full_turbo_from_the_remote_cache(tmp_path, signed):
    turbo = require_node_tool("turbo")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    try:
        ws = workspace(FIXTURE, tmp_path / "ws")
        hygiene = {"TURBO_TELEMETRY_DISABLED": "1"}
        if signed:
            config = json.loads((ws / "turbo.json").read_text())
            (ws / "turbo.json").write_text(json.dumps({**config, "remoteCache": {"signature": True}}))
            hygiene["TURBO_REMOTE_CACHE_SIGNATURE_KEY"] = KEY
        env = client_env(daemon, **hygiene)
        cold = _build(turbo, ws, env)
        assert "Remote caching enabled" in cold.output, cold.output
        assert cold.output.count("cache miss, executing") == len(PACKAGES), cold.output
        built = outputs(ws)
        assert len(built) == 2 * len(PACKAGES)

        _clear_local(ws)
        warm = _build(turbo, ws, env)
        assert "FULL TURBO" in warm.output, warm.output
        assert set(_sources(ws).values()) == {"REMOTE"}, _sources(ws)
        assert outputs(ws) == built
        kind = "signed" if signed else "unsigned"
        print(f"turbo 2.11 ({kind}): cold build {cold.seconds:.1f} s, rebuild from micd {warm.seconds:.1f} s")
        if signed:  # under another key the stored tag does not verify: turbo must not use the artifact
            _clear_local(ws)
            other = _build(turbo, ws, {**env, "TURBO_REMOTE_CACHE_SIGNATURE_KEY": KEY[::-1]})
            assert "FULL TURBO" not in other.output, other.output
            assert other.output.count("cache miss, executing") == len(PACKAGES), other.output
            assert outputs(ws) != built  # rebuilt: fresh random bytes
    finally:
        daemon.stop()


def test_turbo_hits_from_s3_with_the_disk_tier_wiped(tmp_path, s3_bucket):
    turbo = require_node_tool("turbo")
    endpoint, bucket = s3_bucket
    s3 = {"MIC_S3_BUCKET": bucket, "MIC_S3_ENDPOINT_URL": endpoint, "MIC_S3_REGION": "us-east-1"}
    ws = workspace(FIXTURE, tmp_path / "ws")
    first = Daemon(tmp_path / "state", tmp_path / "cache-1", {**s3, "MIC_DRAIN_TIMEOUT": "120"}).start()
    try:
        _build(turbo, ws, client_env(first, TURBO_TELEMETRY_DISABLED="1"))
        built = outputs(ws)
    finally:
        first.stop()  # SIGTERM drains the upload queue to S3
    shutil.rmtree(tmp_path / "cache-1")
    second = Daemon(tmp_path / "state", tmp_path / "cache-2", s3).start()  # an empty disk tier
    try:
        _clear_local(ws)
        warm = _build(turbo, ws, client_env(second, TURBO_TELEMETRY_DISABLED="1"))
        assert "FULL TURBO" in warm.output, warm.output
        assert outputs(ws) == built
        series = second.stats()["metrics"]["series"]
        assert series["turbo/s3/hit"]["count"] >= len(PACKAGES), series
    finally:
        second.stop()
