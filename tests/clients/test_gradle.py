"""Real Gradle 4.4.1 (Debian) against a real `micd run` subprocess, configured only by the daemon's `env.json`:
the init script `MIC_GRADLE_INIT` names is copied into a private `$GRADLE_USER_HOME/init.d/` (what activation
will do, issue 14). A cold `--build-cache` build of tests/clients/gradle_ws (two Java subprojects, `:b` using
`:a`) uploads both compile tasks' outputs; after `clean` and deleting the local build cache
(`caches/build-cache-1`), the rebuild takes both from micd (`FROM-CACHE`) with byte-identical classes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import run
from tests.fixtures.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIXTURE = Path(__file__).parent / "gradle_ws"
COMPILE_TASKS = (":a:compileJava", ":b:compileJava")


def _classes(ws: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(ws)): path.read_bytes() for path in sorted(ws.glob("*/build/classes/**/*.class"))
    }


def _series(daemon: Daemon, event: str) -> int:
    return daemon.stats()["metrics"]["series"].get(f"gradle/all/{event}", {}).get("count", 0)


def test_gradle_compiles_from_the_remote_cache_after_clean_and_a_wiped_local_cache(tmp_path):
    gradle = require_tool("gradle")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    try:
        client = daemon.client_env()
        user_home = tmp_path / "gradle-home"
        (user_home / "init.d").mkdir(parents=True)
        init = Path(client["MIC_GRADLE_INIT"])
        shutil.copy(init, user_home / "init.d" / init.name)
        env = {**os.environ, "GRADLE_USER_HOME": str(user_home), "GRADLE_OPTS": "-Xmx256m"}
        ws = tmp_path / "ws"
        shutil.copytree(FIXTURE, ws)
        build = [gradle, "--no-daemon", "--console=plain", "--build-cache", "build"]

        cold = run(build, ws, env)
        assert "FROM-CACHE" not in cold.output, cold.output
        built = _classes(ws)
        expected = {
            "a/build/classes/java/main/demo/Greeting.class",
            "b/build/classes/java/main/demo/Main.class",
        }
        assert expected <= set(built), built.keys()
        assert _series(daemon, "put") >= 2 * len(COMPILE_TASKS)  # an entry blob and its record per task

        run([gradle, "--no-daemon", "--console=plain", "clean"], ws, env)
        shutil.rmtree(user_home / "caches" / "build-cache-1")
        assert not _classes(ws)
        warm = run(build, ws, env)
        for task in COMPILE_TASKS:
            assert f"{task} FROM-CACHE" in warm.output.splitlines(), warm.output  # 4.4's plain console
        assert _classes(ws) == built
        assert _series(daemon, "hit") >= len(COMPILE_TASKS)
        print(f"gradle 4.4.1: cold build {cold.seconds:.1f} s, rebuild from micd {warm.seconds:.1f} s")
    finally:
        daemon.stop()
