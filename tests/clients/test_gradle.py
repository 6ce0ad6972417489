"""Real Gradle 4.4.1 (Debian) against a real `micd run` subprocess, configured only by the daemon's `env.json`:
the init script `MIC_GRADLE_INIT` names is copied into a private `$GRADLE_USER_HOME/init.d/` (what activation
will do, issue 14). A cold `--build-cache` build of tests/clients/gradle_ws (two Java subprojects, `:b` using
`:a`) uploads both compile tasks' outputs; after `clean` and deleting the local build cache
(`caches/build-cache-1`), the rebuild takes both from micd (`FROM-CACHE`) with byte-identical classes; and
again from S3 (moto) with the first daemon's disk tier deleted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import Run, run
from tests.fixtures.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIXTURE = Path(__file__).parent / "gradle_ws"
COMPILE_TASKS = (":a:compileJava", ":b:compileJava")


def _classes(ws: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(ws)): path.read_bytes() for path in sorted(ws.glob("*/build/classes/**/*.class"))
    }


def _series(daemon: Daemon, event: str, tier: str = "all") -> int:
    return daemon.stats()["metrics"]["series"].get(f"gradle/{tier}/{event}", {}).get("count", 0)


def _gradle_env(daemon: Daemon, user_home: Path) -> dict[str, str]:
    """A private GRADLE_USER_HOME whose init.d holds the init script env.json names (what activation will
    install, issue 14); rewritten per daemon, whose port it carries."""
    init = Path(daemon.client_env()["MIC_GRADLE_INIT"])
    (user_home / "init.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(init, user_home / "init.d" / init.name)
    return {**os.environ, "GRADLE_USER_HOME": str(user_home), "GRADLE_OPTS": "-Xmx256m"}


def _build(gradle: str, ws: Path, env: dict[str, str]) -> Run:
    return run([gradle, "--no-daemon", "--console=plain", "--build-cache", "build"], ws, env)


def _clean(gradle: str, ws: Path, env: dict[str, str]) -> None:
    """`clean`, and delete the local build cache Gradle consults before the remote one."""
    run([gradle, "--no-daemon", "--console=plain", "clean"], ws, env)
    shutil.rmtree(Path(env["GRADLE_USER_HOME"]) / "caches" / "build-cache-1")
    assert not _classes(ws)


def _assert_from_cache(warm: Run) -> None:
    for task in COMPILE_TASKS:
        assert f"{task} FROM-CACHE" in warm.output.splitlines(), warm.output  # 4.4's plain console


def test_gradle_compiles_from_the_remote_cache_after_clean_and_a_wiped_local_cache(tmp_path):
    gradle = require_tool("gradle")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    try:
        env = _gradle_env(daemon, tmp_path / "gradle-home")
        ws = tmp_path / "ws"
        shutil.copytree(FIXTURE, ws)
        cold = _build(gradle, ws, env)
        assert "FROM-CACHE" not in cold.output, cold.output
        built = _classes(ws)
        expected = {
            "a/build/classes/java/main/demo/Greeting.class",
            "b/build/classes/java/main/demo/Main.class",
        }
        assert expected <= set(built), built.keys()
        assert _series(daemon, "put") >= 2 * len(COMPILE_TASKS)  # an entry blob and its record per task

        _clean(gradle, ws, env)
        warm = _build(gradle, ws, env)
        _assert_from_cache(warm)
        assert _classes(ws) == built
        assert _series(daemon, "hit") >= len(COMPILE_TASKS)
        print(f"gradle 4.4.1: cold build {cold.seconds:.1f} s, rebuild from micd {warm.seconds:.1f} s")
    finally:
        daemon.stop()


def test_gradle_compiles_from_s3_with_the_disk_tier_wiped(tmp_path, s3_bucket):
    gradle = require_tool("gradle")
    endpoint, bucket = s3_bucket
    s3 = {"MIC_S3_BUCKET": bucket, "MIC_S3_ENDPOINT_URL": endpoint, "MIC_S3_REGION": "us-east-1"}
    ws = tmp_path / "ws"
    shutil.copytree(FIXTURE, ws)
    first = Daemon(tmp_path / "state", tmp_path / "cache-1", {**s3, "MIC_DRAIN_TIMEOUT": "120"}).start()
    try:
        env = _gradle_env(first, tmp_path / "gradle-home")
        _build(gradle, ws, env)
        built = _classes(ws)
    finally:
        first.stop()  # SIGTERM drains the upload queue to S3
    shutil.rmtree(tmp_path / "cache-1")
    second = Daemon(tmp_path / "state", tmp_path / "cache-2", s3).start()  # an empty disk tier
    try:
        env = _gradle_env(second, tmp_path / "gradle-home")
        _clean(gradle, ws, env)
        warm = _build(gradle, ws, env)
        _assert_from_cache(warm)
        assert _classes(ws) == built
        assert _series(second, "hit", "s3") >= len(COMPILE_TASKS)
        print(f"gradle 4.4.1: rebuild from micd's S3 tier {warm.seconds:.1f} s")
    finally:
        second.stop()
