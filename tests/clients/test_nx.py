"""Real Nx 24 (npm, tests/clients/node) against a real `micd run` subprocess, configured only by the
daemon's `env.json`: a cold `nx run-many -t build` uploads both tasks' outputs; after `nx reset` (which
empties the local cache in `.nx`) and deleting the outputs, the rebuild reads both from the remote cache
(`[remote cache]`) and restores byte-identical outputs. The workspace is tests/clients/nx_ws (two projects,
2 MiB of outputs each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import client_env, outputs, run, workspace
from tests.fixtures.tools import require_node_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIXTURE = Path(__file__).parent / "nx_ws"
PROJECTS = ("lib-a", "lib-b")


def _series(daemon: Daemon, event: str) -> int:
    return daemon.stats()["metrics"]["series"].get(f"nx/all/{event}", {}).get("count", 0)


def test_nx_reads_task_outputs_from_the_remote_cache_after_a_reset(tmp_path):
    nx = require_node_tool("nx")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    try:
        ws = workspace(FIXTURE, tmp_path / "ws", node_modules=True)
        env = client_env(daemon, NX_DAEMON="false", NX_TUI="false")
        build = [nx, "run-many", "-t", "build", "--output-style=static"]
        cold = run(build, ws, env)
        assert "[remote cache]" not in cold.output and "[local cache]" not in cold.output, cold.output
        built = outputs(ws)
        assert len(built) == 2 * len(PROJECTS)
        assert _series(daemon, "put") >= 2 * len(PROJECTS)  # an artifact blob and its record per task

        run([nx, "reset"], ws, env)
        assert not (ws / ".nx" / "cache").exists()
        for project in PROJECTS:
            shutil.rmtree(ws / "packages" / project / "dist")
        warm = run(build, ws, env)
        assert warm.output.count("[remote cache]") == len(PROJECTS), warm.output
        assert outputs(ws) == built
        print(f"nx 24: cold build {cold.seconds:.1f} s, rebuild from micd {warm.seconds:.1f} s")
    finally:
        daemon.stop()
