"""mic's temp files (`Workspace.temp_file`): a write never follows what is planted at a temp name, and a temp
file is never left behind by a failed or cancelled write, nor shown or landed when a killed one leaves it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from mic import vcs
from mic.formats.chunked import CHUNK_SIZE
from mic.workspace import Workspace
from tests.mic.conftest import ROOT
from tests.mic.test_large_files import _land_large

SIZES = {"small": 100, "large": 2 * CHUNK_SIZE + 1}  # written whole, or streamed chunk by chunk


def _temp_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.mic-tmp"))


def test_a_leftover_temp_file_is_not_shown_nor_landed(local_store_env, mic, tmp_path):
    mic(tmp_path, "project", "create", "p")
    ws = tmp_path / "ws"
    mic(tmp_path, "checkout", "p", str(ws))
    (ws / "sub").mkdir()
    (ws / ".big.bin.k3j_x9a2.mic-tmp").write_bytes(b"half a download")  # the names temp_file makes
    (ws / "sub" / ".a.txt.q1w2e3r4.mic-tmp").write_bytes(b"half a write")
    (ws / ".old.txt.mic-tmp").write_bytes(b"left by an older version")
    assert mic.json(ws, "status")["changes"] == []
    assert "nothing to land" in mic.json(ws, "land", "nothing", code=1)["error"]

    (ws / "real.txt").write_text("real\n")
    assert mic.json(ws, "land", "add a file")["paths"] == ["real.txt"]
    listed = [e["path"] for e in mic.json(ws, "ls", "--recursive")["entries"]]
    assert listed == ["real.txt"]


_KILLED_CHECKOUT = """
import asyncio, os, signal, sys
from pathlib import Path
from mic import objects, vcs
from mic.objects import Project
from mic.objectstore import open_store

store_url, root = sys.argv[1], Path(sys.argv[2])
real, seen = objects.decode_blob, []

def decode_then_die(raw):  # SIGKILL while the third chunk arrives: two are in the temp file
    seen.append(1)
    if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(raw)

objects.decode_blob = decode_then_die

async def main():
    await vcs.checkout(Project(open_store(store_url), "p"), root, store_url=store_url, s3_endpoint_url=None)

asyncio.run(main())
"""


async def test_a_checkout_killed_while_streaming_leaves_nothing_to_land(project, tmp_path):
    """SIGKILL (OOM, a closed terminal) mid-download leaves the temp file; `mic status` and land ignore it."""
    await _land_large(project, tmp_path)
    b = tmp_path / "b"
    url = f"file://{tmp_path / 'store'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _KILLED_CHECKOUT, url, str(b)]
    done = await asyncio.to_thread(subprocess.run, argv, check=False, env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = _temp_files(b)
    assert len(left) == 1 and left[0].startswith(".big.bin.") and (b / left[0]).stat().st_size == 2 * CHUNK_SIZE

    ws = Workspace.open(b)
    assert (await vcs.status(ws)).changes == {}
    (b / "note.txt").write_text("after the crash\n")
    out = await vcs.land_workspace(project, ws, "my next change")
    assert sorted(out.changes) == ["note.txt"]
