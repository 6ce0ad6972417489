"""Real ccache 4.7.5 (Debian) against a real `micd run` subprocess, configured only by the daemon's `env.json`
(`CCACHE_REMOTE_STORAGE` with the bearer token): a cold `ccache gcc -c` stores the result in micd; after
`ccache -C` (the local cache emptied) the same compile is a remote hit in ccache's own statistics and the
object file is byte-identical. Each layout (`subdirs`, `flat`, `bazel`) is one run."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.clients.daemon import Daemon
from tests.clients.js_workspace import run
from tests.fixtures.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SOURCE = '#include "add.h"\n\nint twice(int a) { return add(a, a); }\n'
HEADER = "static inline int add(int a, int b) { return a + b; }\n"


def _stats(ccache: str, env: dict[str, str]) -> dict[str, int]:
    """ccache's own counters (`--print-stats`: the machine-readable form of `ccache -s`)."""
    out = subprocess.run(
        [ccache, "--print-stats"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return {name: int(value) for name, value in (line.split("\t") for line in out.splitlines())}


@pytest.mark.parametrize("layout", ["subdirs", "flat", "bazel"])
def test_ccache_hits_the_remote_storage_after_its_local_cache_is_cleared(tmp_path, layout):
    ccache, gcc = require_tool("ccache"), require_tool("gcc")
    daemon = Daemon(tmp_path / "state", tmp_path / "cache").start()
    try:
        storage = daemon.client_env()["CCACHE_REMOTE_STORAGE"]
        if layout != "subdirs":  # the default: env.json as it is
            storage += f"|layout={layout}"
        (tmp_path / "ccache.conf").write_text("")  # no system or user configuration
        env = {
            **os.environ,
            "CCACHE_REMOTE_STORAGE": storage,
            "CCACHE_DIR": str(tmp_path / "ccache"),
            "CCACHE_CONFIGPATH": str(tmp_path / "ccache.conf"),
        }
        src = tmp_path / "src"
        src.mkdir()
        (src / "twice.c").write_text(SOURCE)
        (src / "add.h").write_text(HEADER)
        compile_ = [ccache, gcc, "-O2", "-c", "twice.c", "-o", "twice.o"]

        cold = run(compile_, src, env)
        built = (src / "twice.o").read_bytes()
        stats = _stats(ccache, env)
        assert stats["remote_storage_write"] >= 1 and stats["remote_storage_error"] == 0, stats

        run([ccache, "-C"], src, env)  # clears the local cache
        (src / "twice.o").unlink()
        warm = run(compile_, src, env)
        assert (src / "twice.o").read_bytes() == built
        stats = _stats(ccache, env)
        assert stats["remote_storage_hit"] == 1 and stats["remote_storage_error"] == 0, stats
        shown = run([ccache, "-s"], src, env).output
        assert re.search(r"Remote storage:\n\s+Hits:\s+1 /", shown), shown
        print(f"ccache 4.7.5 ({layout}): cold compile {cold.seconds:.2f} s, from micd {warm.seconds:.2f} s")
    finally:
        daemon.stop()
