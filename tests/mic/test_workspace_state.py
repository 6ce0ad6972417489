"""`.mic/state.json` and `.mic/index` under concurrent commands, loss and damage."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from mic import session as mic_session

from .conftest import run_mic


def _ws(mic, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("k\n")
    (ws / "gone.txt").write_text("g\n")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "first")
    return ws


def _state(ws) -> dict:
    return json.loads((ws / ".mic" / "state.json").read_text())


def test_a_note_during_a_land_waits_and_does_not_restore_the_old_state(local_store_env, mic, tmp_path, monkeypatch):
    """A land holds the workspace lock from its scan to its saved new base. A note started meanwhile waits, then
    sees the state the land left (no active session) instead of writing back the base and session it read
    before: the old code restored them, and the next land re-reported the old landing and dropped new edits."""
    ws = _ws(mic, tmp_path)
    mic(ws, "session", "start", "goal")
    before = _state(ws)
    landed = {**before, "base": before["base"] + 1, "session": None}
    taken = threading.Event()

    def a_land_in_progress() -> None:  # what `mic land` does to state.json, under the lock
        fd = os.open(ws / ".mic" / "lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            taken.set()
            time.sleep(0.3)
            (ws / ".mic" / "state.json").write_text(json.dumps(landed))
        finally:
            os.close(fd)

    real_update = mic_session.update_session

    async def slow_update(*args, **kwargs):  # the note's store round trip takes a while (S3)
        await asyncio.sleep(0.6)
        return await real_update(*args, **kwargs)

    monkeypatch.setattr(mic_session, "update_session", slow_update)
    lander = threading.Thread(target=a_land_in_progress)
    lander.start()
    assert taken.wait(10)
    try:
        out = mic(ws, "session", "note", "hello", code=1)
    finally:
        lander.join()
    assert "no active session" in out.output
    assert _state(ws) == landed


def test_status_waits_for_a_land_and_shows_its_result(local_store_env, mic, tmp_path):
    """Status during a land waits for its lock, then shows the state the land left, not a half-written mix."""
    ws = _ws(mic, tmp_path)
    fd = os.open(ws / ".mic" / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def finish_land() -> None:
        (ws / ".mic" / "state.json").write_text(json.dumps({**_state(ws), "session": "s-after-the-land"}))
        os.close(fd)

    timer = threading.Timer(0.5, finish_land)
    timer.start()
    try:
        assert mic.json(ws, "status")["session"] == "s-after-the-land"
    finally:
        timer.join()


def test_concurrent_notes_and_lands_in_one_workspace_lose_nothing(local_store_env, tmp_path):
    """Real processes: a land and a note racing in one workspace always leave the land's state."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("0\n")
    assert run_mic(ws, "init", "--project", "p").returncode == 0
    assert run_mic(ws, "land", "base").returncode == 0
    for i in range(3):
        (ws / "f").write_text(f"{i + 1}\n")
        assert run_mic(ws, "session", "start", f"g{i}").returncode == 0
        land = subprocess.Popen([sys.executable, "-m", "mic", "land"], cwd=ws, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        run_mic(ws, "session", "note", f"n{i}")
        assert land.wait(60) == 0
        assert _state(ws)["session"] is None
        assert json.loads(run_mic(ws, "status", "--json").stdout)["changes"] == []


@pytest.mark.parametrize("how", ["lost", "garbage", "entries damaged"])
def test_a_lost_or_damaged_index_is_rebuilt_from_the_base(how, local_store_env, mic, tmp_path):
    """The index is the only local record of the base; when it is gone or damaged, status and land rebuild it
    from the base tree, so a deleted base file is still seen (it used to vanish, the others showing as added)."""
    ws = _ws(mic, tmp_path)
    (ws / "gone.txt").unlink()
    index = ws / ".mic" / "index"
    if how == "lost":
        index.unlink()
    elif how == "garbage":
        index.write_bytes(b"garbage")
    else:  # header and stat keys intact, the entries blob (the file's tail) damaged: found only during the scan
        raw = index.read_bytes()
        index.write_bytes(raw[:-8] + b"\xff" * 8)
    assert mic.json(ws, "status")["changes"] == [{"path": "gone.txt", "kind": "deleted"}]
    (ws / ".mic" / "index").unlink()
    out = mic.json(ws, "land", "remove gone")
    assert out["paths"] == ["gone.txt"]
    assert mic.json(ws, "status")["changes"] == []


@pytest.mark.parametrize("bad", [
    {"base": "1"}, {"base": -1}, {"base": True}, {"base_tree": "zz"}, {"base_tree": 5}, {"session": 5},
    {"hlc": None}, {"project": 3}, {"extra": 1},
])
def test_a_state_file_with_wrong_types_is_reported_as_unreadable(bad, local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    (ws / ".mic" / "state.json").write_text(json.dumps({**_state(ws), **bad}))
    for args in (("status",), ("land", "x"), ("session", "note", "x")):
        out = mic(ws, *args, code=1)
        assert "state.json is unreadable" in out.output, (args, out.output)


def test_a_state_file_that_is_not_an_object_is_reported_as_unreadable(local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    (ws / ".mic" / "state.json").write_text("[1, 2]")
    assert "state.json is unreadable" in mic(ws, "status", code=1).output


def test_save_state_is_durable(tmp_path, monkeypatch):
    """The base position a land saved must survive a power cut: the new bytes are fsynced before they replace
    `state.json`, and `.mic` after (else the rename itself can be lost). It used to be written with no fsync."""
    from mic.workspace import Workspace, WorkspaceState

    ws = Workspace.create(tmp_path, WorkspaceState("p", 0, "00" * 32), store_url="file:///x", s3_endpoint_url=None)
    state = ws.dot / "state.json"
    real_fsync = os.fsync
    synced: list[tuple[str, int | None]] = []  # (what was fsynced, the base in state.json at that moment)

    def recording(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(target):
            synced.append((target, json.loads(state.read_text())["base"]))
        else:
            synced.append((json.loads(os.pread(fd, 1 << 16, 0))["base"], json.loads(state.read_text())["base"]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    ws.state.base = 7
    ws.save_state()
    assert synced == [(7, 0), (str(ws.dot), 7)]  # the new bytes while state.json is still old, then .mic
    assert _state(tmp_path)["base"] == 7
    assert sorted(os.listdir(ws.dot)) == ["config.toml", "state.json"]  # no temp file left
