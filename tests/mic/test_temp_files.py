"""mic's temp files (`Workspace.temp_file`): a write never follows what is planted at a temp name, and a temp
file is never left behind by a failed or cancelled write, nor shown or landed when a killed one leaves it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest

from mic import landing, vcs
from mic.formats.btree_node import FileEntry
from mic.formats.chunked import CHUNK_SIZE
from mic.objects import content_hash
from mic.session import start_session
from mic.tree import EMPTY_ROOT
from mic.workspace import Workspace
from tests.mic.conftest import ROOT
from tests.mic.test_land_workspace import _checkout
from tests.mic.test_large_files import _land_large, _write_random

SIZES = {"small": 100, "large": 2 * CHUNK_SIZE + 1}  # written whole, or streamed chunk by chunk


def _temp_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.mic-tmp"))


def _fds_on_temp_files() -> list[str]:
    """This process's open files whose path names a mic temp file (removed or not)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if ".mic-tmp" in target:
            found.append(target)
    return found


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious, outside the workspace\n")
    victim.chmod(0o600)
    return victim


def _victim_intact(victim) -> bool:
    return victim.read_text() == "precious, outside the workspace\n" and victim.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("size", SIZES)
async def test_a_symlink_at_the_old_temp_name_is_never_followed(project, tmp_path, size):
    """The temp name used to be the fixed `.<name>.mic-tmp`: a symlink there (made locally, or landed by an older
    version) had the sync write and chmod the file it points to, outside the workspace."""
    victim = _victim(tmp_path)
    a = await _checkout(project, tmp_path / "a")
    b = await _checkout(project, tmp_path / "b")
    _write_random(a.root / "f.bin", SIZES[size])
    (a.root / "f.bin").chmod(0o755)
    await vcs.land_workspace(project, a, "add f.bin")
    os.symlink(victim, b.root / ".f.bin.mic-tmp")

    synced = await vcs.sync_to(project, b, (await vcs.tree_at(project, None))[1])

    assert synced.kept == ()
    assert _victim_intact(victim)
    assert (b.root / "f.bin").read_bytes() == (a.root / "f.bin").read_bytes()
    assert not (b.root / "f.bin").is_symlink() and os.access(b.root / "f.bin", os.X_OK)
    assert os.readlink(b.root / ".f.bin.mic-tmp") == str(victim)  # not ours to touch: left as it was
    assert (await vcs.status(b, save=False)).changes == {}


async def test_a_temp_name_landed_by_an_older_version_is_skipped_by_checkout(project, tmp_path, monkeypatch):
    """History may hold a symlink at a temp name (older versions landed one): checkout does not write it."""
    victim = _victim(tmp_path)
    monkeypatch.setattr(landing, "check_path", lambda path: None)  # as the older versions did
    session = await start_session(project, "old history", 0, 1)
    link = os.fsencode(victim)
    changes = {".big.bin.mic-tmp": FileEntry(content_hash(link), len(link), 2)}

    async def write_blobs() -> int:
        return (await project.put_content(link))[1]

    await landing.land(project, session, changes, {".big.bin.mic-tmp": "added"}, write_blobs, hlc=lambda t: t + 1)
    monkeypatch.undo()
    a = await _checkout(project, tmp_path / "a")
    _write_random(a.root / "big.bin", SIZES["large"])
    await vcs.land_workspace(project, a, "add a large file")

    skipped: list[str] = []
    b = await vcs.checkout(
        project, tmp_path / "b", store_url=f"file://{tmp_path / 'store'}", s3_endpoint_url=None, skipped=skipped
    )
    assert skipped == [".big.bin.mic-tmp"]
    assert sorted(p.name for p in b.root.iterdir()) == [".mic", "big.bin"]
    assert _victim_intact(victim)


@pytest.mark.parametrize("size", SIZES)
async def test_a_directory_at_the_old_temp_name_does_not_stop_the_write(project, tmp_path, size):
    """Writing into a directory at the fixed temp name failed: the small file was wrongly kept as a local edit,
    and for a large one the cleanup's IsADirectoryError replaced the original error."""
    a = await _checkout(project, tmp_path / "a")
    b = await _checkout(project, tmp_path / "b")
    _write_random(a.root / "f.bin", SIZES[size])
    await vcs.land_workspace(project, a, "add f.bin")
    (b.root / ".f.bin.mic-tmp").mkdir()

    synced = await vcs.sync_to(project, b, (await vcs.tree_at(project, None))[1])

    assert synced.kept == ()
    assert (b.root / "f.bin").read_bytes() == (a.root / "f.bin").read_bytes()
    assert _temp_files(b.root) == [".f.bin.mic-tmp"]  # the directory, left alone


async def test_a_file_name_at_the_length_limit_checks_out(project, tmp_path):
    """The temp name is longer than the file's; for a 255-byte name the fixed one could not be created."""
    name = "é" * 125 + ".txt"  # 254 bytes in UTF-8
    a = await _checkout(project, tmp_path / "a")
    (a.root / name).write_text("long\n")
    await vcs.land_workspace(project, a, "add a long name")

    b = await _checkout(project, tmp_path / "b")
    assert (b.root / name).read_text() == "long\n"
    assert _temp_files(b.root) == []


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


def _holding_to_thread(real, n: int):
    """An `asyncio.to_thread` whose `n`th call (from 0) waits in its thread for `release` before it runs; returns
    it and the events `entered` (that call was reached), `release` and `done` (that call ran)."""
    entered, release, done = threading.Event(), threading.Event(), threading.Event()
    calls = [0]

    async def to_thread(func, /, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n + 1:
            return await real(func, *args, **kwargs)

        def held():
            entered.set()
            release.wait(10)
            try:
                return func(*args, **kwargs)
            finally:
                done.set()

        return await real(held)

    return to_thread, entered, release, done


async def test_a_streamed_write_cancelled_at_any_point_leaves_no_temp_file_or_fd(project, tmp_path, monkeypatch):
    """Ctrl-C during a sync cancels it while a thread does part of the write: cancel at each `to_thread` call in
    turn, held until the task has finished, then let the thread run. The temp file was opened in such a thread,
    after the cancelled task's cleanup had run: it stayed, and the scan reported it as a new file."""
    await _land_large(project, tmp_path)
    b = await _checkout(project, tmp_path / "b")
    target = (await vcs.tree_at(project, None))[1]
    real_to_thread = asyncio.to_thread
    cancelled_at = 0
    while True:
        (b.root / "big.bin").unlink(missing_ok=True)  # back to before the file: the sync writes it again
        b.state.base_tree = EMPTY_ROOT.hex()
        b.index.entries.pop("big.bin", None)
        to_thread, entered, release, done = _holding_to_thread(real_to_thread, cancelled_at)
        monkeypatch.setattr(asyncio, "to_thread", to_thread)
        task = asyncio.ensure_future(vcs.sync_to(project, b, target))
        while not entered.is_set() and not task.done():
            await asyncio.sleep(0.001)
        if task.done():  # past the last call: the sync ran through
            monkeypatch.undo()
            assert (await task).updated == 1
            break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await real_to_thread(done.wait, 10)
        monkeypatch.undo()
        assert _temp_files(b.root) == [], f"cancelled at to_thread call {cancelled_at}"
        assert _fds_on_temp_files() == [], f"cancelled at to_thread call {cancelled_at}"
        cancelled_at += 1
    assert cancelled_at >= 4  # every chunk's write, the final check and replace
    assert _temp_files(b.root) == []
    assert (await vcs.status(b, save=False)).changes == {}
