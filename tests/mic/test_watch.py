"""The workspace watcher: real watcher processes on real trees. Every watcher-assisted status is compared with a
full scan that re-hashes every file (the truth); every watcher a test starts is killed by PID when it ends."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from mic.statcache import Index, scan
from mic.watch import LOG, PID, SOCKET, client
from mic.watch.client import WatchSettings, scan_workspace
from micd.config import load_config
from mickernel.errors import ConfigError

from .conftest import run_mic

SETTINGS = WatchSettings(enabled=True, min_files=0, idle_timeout=120.0)


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def watcher_pids(under: Path) -> list[int]:
    """Live watcher processes whose workspace is `under` or below it."""
    prefix = os.fsencode(str(under))
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            cmd = _cmdline(int(name))
            if b"mic.watch" in cmd and any(arg.startswith(prefix) for arg in cmd) and alive(int(name)):
                found.append(int(name))
    return found


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_watcher_outlives_the_test(tmp_path):
    yield
    for pid in watcher_pids(tmp_path):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not watcher_pids(tmp_path), what="watchers to die")


def _age(path: Path, seconds: float = 5.0) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def make_workspace(root: Path, dirs: int = 4, per_dir: int = 5) -> dict:
    """A tree whose every file is in the base, with its stat cache saved; returns the base entries."""
    (root / ".mic").mkdir(parents=True)
    for d in range(dirs):
        for f in range(per_dir):
            path = root / f"d{d}" / "sub" / f"f{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"file {d}/{f}\n")
            _age(path)
    index = Index(root / ".mic" / "index")
    scan(root, index)
    for rel, e in list(index.entries.items()):
        index.entries[rel] = (*e[:5], e[3], e[4], e[0], *e[8:])
    index.save()
    return dict(index.entries)


def truth(root: Path, base: dict) -> dict:
    """What a full scan reports when it trusts no stat data at all."""
    smudged = {rel: (e[0], -1, *e[2:]) for rel, e in base.items()}
    return scan(root, Index(root.parent / "truth-index", smudged)).changes


class Status:
    """`mic status`'s scan, in process, counting the full scans it falls back to."""

    def __init__(self, root: Path, monkeypatch, settings: WatchSettings = SETTINGS) -> None:
        self.root, self.settings, self.full = root, settings, 0

        def counting_scan(*args):
            self.full += 1
            return scan(*args)

        monkeypatch.setattr(client, "scan", counting_scan)
        # a loaded machine may answer late; a late answer falls back to a full scan, which `fast` would fail
        monkeypatch.setattr(client, "_ANSWER_TIMEOUT", 30.0)

    def __call__(self) -> dict:
        index = Index.load(self.root / ".mic" / "index")
        result = scan_workspace(self.root, index, self.settings)
        if result.rehashed or index.unsaved:
            index.save()
        return result.changes

    def fast(self) -> dict:
        before = self.full
        changes = self()
        assert self.full == before, "expected a scan of the watcher's paths only"
        return changes

    def pid(self) -> int:
        return int((self.root / ".mic" / PID).read_text())


@pytest.fixture
def ws(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    base = make_workspace(root)
    status = Status(root, monkeypatch)
    assert status() == {} and status.full == 1  # starts the watcher, scans in full, saves the watcher's token
    assert status.fast() == {}
    return root, base, status


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


OPERATIONS = {
    "create": lambda r: _write(r / "d0" / "new.txt", "new"),
    "modify": lambda r: _write(r / "d1" / "sub" / "f1.txt", "changed"),
    "modify same size": lambda r: _write(r / "d1" / "sub" / "f1.txt", "FILE 1/1\n"),
    "delete": lambda r: (r / "d2" / "sub" / "f2.txt").unlink(),
    "chmod +x": lambda r: os.chmod(r / "d3" / "sub" / "f0.txt", 0o755),
    "symlink": lambda r: os.symlink("sub/f0.txt", r / "d0" / "link"),
    "rename file": lambda r: os.rename(r / "d0" / "sub" / "f0.txt", r / "d0" / "sub" / "g0.txt"),
    "rename directory": lambda r: os.rename(r / "d1", r / "moved"),
    "move directory deeper": lambda r: os.renames(r / "d1" / "sub", r / "d2" / "x" / "y" / "sub"),
    "mkdir -p deep then write": lambda r: _write(r / "a" / "b" / "c" / "d" / "e" / "f.txt", "deep"),
    "delete directory tree": lambda r: shutil.rmtree(r / "d2"),
    "directory becomes a file": lambda r: (shutil.rmtree(r / "d3"), _write(r / "d3", "now a file")),
    "file becomes a directory": lambda r: (
        (r / "d0" / "sub" / "f1.txt").unlink(), _write(r / "d0" / "sub" / "f1.txt" / "inner", "x")),
    "directory becomes a symlink": lambda r: (shutil.rmtree(r / "d1"), os.symlink("d0", r / "d1")),
    "directory named .git is ignored": lambda r: _write(r / "d0" / ".git" / "HEAD", "ref"),
    "file named .git is ignored too": lambda r: _write(r / "d0" / ".git", "gitdir: elsewhere"),  # mic.paths
    "touch without change": lambda r: os.utime(r / "d0" / "sub" / "f3.txt"),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_each_change_is_reported_as_a_full_scan_would(ws, op):
    root, base, status = ws
    OPERATIONS[op](root)
    expected = truth(root, base)
    assert status.fast() == expected
    assert status.fast() == expected  # and again, from the saved index and the new token
    if op not in ("touch without change", "directory named .git is ignored", "file named .git is ignored too"):
        assert expected


def test_changes_after_a_directory_move_are_seen_at_its_new_path(ws):
    root, base, status = ws
    os.rename(root / "d1", root / "moved")
    assert status.fast() == truth(root, base)
    _write(root / "moved" / "sub" / "f1.txt", "written after the move")
    (root / "moved" / "sub" / "deeper").mkdir()
    assert status.fast() == truth(root, base)
    _write(root / "moved" / "sub" / "deeper" / "new", "in a directory made after the move")
    os.rename(root / "d2", root.parent / "outside")  # out of the workspace: its watches must not matter
    _write(root.parent / "outside" / "sub" / "f0.txt", "not in the workspace")
    (root / "d2" / "sub").mkdir(parents=True)
    assert status.fast() == truth(root, base)


def test_a_deletion_found_by_a_watched_scan_survives_the_save(ws):
    root, base, status = ws
    (root / "d2" / "sub" / "f2.txt").unlink()
    _write(root / "d3" / "sub" / "f3.txt", "changed, so this status saves the index and the new token")
    expected = truth(root, base)
    assert status.fast() == expected and "d2/sub/f2.txt" in expected
    index = Index.load(root / ".mic" / "index")
    assert index.changes() == expected  # from the saved index alone: nothing is reported any more
    assert status.fast() == expected


@pytest.mark.parametrize("version", [4, 5])
def test_an_older_index_is_read_and_rescanned_once(ws, version):
    """Versions 4 and 5 (stat keys without ctime) are read: bases kept, every file re-hashed once."""
    import marshal
    import struct

    root, base, status = ws
    path = root / ".mic" / "index"
    raw = path.read_bytes()
    header = struct.Struct("<BxxxQQQ")
    current, n_keys, n_meta, _n_entries = header.unpack_from(raw, 4)
    start = 4 + header.size
    delta, changes, token = marshal.loads(raw[start + n_keys : start + n_keys + n_meta])
    assert current == 6 and token is not None
    old_entries = marshal.dumps({rel: e[:8] for rel, e in base.items()})  # no ctime
    old_keys = marshal.dumps({rel: (e[1], e[0], e[2], e[4]) for rel, e in base.items()})
    meta = marshal.dumps((delta, changes) if version == 4 else (delta, changes, token))
    path.write_bytes(raw[:4] + header.pack(version, len(old_keys), len(meta), len(old_entries)) + old_keys + meta
                     + old_entries)
    old = Index.load(path)
    assert old.token is None and old.unsaved
    assert {rel: e[:8] for rel, e in old.entries.items()} == {rel: e[:8] for rel, e in base.items()}
    assert all(e[8] == -1 for e in old.entries.values())  # no stat matches: each file is re-hashed once
    _write(root / "d0" / "sub" / "f0.txt", "changed")
    full = status.full
    assert status() == truth(root, base) and status.full == full + 1
    assert Index.load(path).token is not None
    assert status.fast() == truth(root, base)


def test_a_change_made_in_the_same_instant_as_a_status(ws):
    root, base, status = ws
    target = root / "d0" / "sub" / "f0.txt"
    for i in range(30):  # same size, same second: only the watcher (or re-hashing) can tell
        target.write_text(f"file 0/{i % 10}\n")
        assert status.fast() == truth(root, base), i
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            target.write_text(f"racing {n}\n")
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20):
            status.fast()
    finally:
        stop.set()
        thread.join()
    assert status.fast() == truth(root, base)


def test_killed_watcher_means_a_full_scan_and_a_new_watcher(ws):
    root, base, status = ws
    old = status.pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), what="the killed watcher")
    _write(root / "d0" / "sub" / "f0.txt", "changed while no watcher ran")
    full = status.full
    assert status() == truth(root, base)
    assert status.full == full + 1
    assert status.pid() != old and alive(status.pid())
    _write(root / "d1" / "new", "x")
    assert status.fast() == truth(root, base)


def test_unknown_generation_means_a_full_scan(ws):
    root, base, status = ws
    index = Index.load(root / ".mic" / "index")
    index.token = ("not-this-watcher", 10**9)
    index.save()
    _write(root / "d0" / "sub" / "f0.txt", "changed")
    full = status.full
    assert status() == truth(root, base) and status.full == full + 1
    token = Index.load(root / ".mic" / "index").token
    assert token is not None and token[0] != "not-this-watcher"
    assert status.fast() == truth(root, base)


def test_queue_overflow_means_a_full_scan_and_watches_again(ws):
    root, base, status = ws
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    pid = status.pid()
    os.kill(pid, signal.SIGSTOP)  # the kernel queues events for it until the queue overflows
    try:
        for i in range(limit // 3 + 1000):  # create, modify, close-write: three events each
            (root / "d0" / f"bulk{i}").write_text("x")
        (root / "late" / "deep").mkdir(parents=True)  # a directory whose creation event is lost
    finally:
        os.kill(pid, signal.SIGCONT)
    full = status.full
    assert status() == truth(root, base) and status.full == full + 1
    assert "overflow" in (root / ".mic" / LOG).read_text()
    _write(root / "late" / "deep" / "after.txt", "seen through a watch added after the overflow")
    assert status.fast() == truth(root, base)


def test_a_directory_that_cannot_be_watched_means_full_scans_until_it_can(tmp_path, monkeypatch, capsys):
    from mic.watch.daemon import Watcher

    root = tmp_path / "ws"
    base = make_workspace(root)
    watcher = Watcher(str(root), idle=30.0)
    add_watch = watcher.inotify.add_watch
    no_space = threading.Event()
    no_space.set()

    def limited(path, mask):  # as when fs.inotify.max_user_watches is used up
        if no_space.is_set() and path.endswith("/d2/sub"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return add_watch(path, mask)

    monkeypatch.setattr(watcher.inotify, "add_watch", limited)
    watcher.start()
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        status = Status(root, monkeypatch)
        for i in range(3):
            _write(root / "d2" / "sub" / f"unwatched{i}", "x")
            assert status() == truth(root, base) and status.full == i + 1
        no_space.clear()  # watches are available again: the retry before the next answer succeeds
        _write(root / "d2" / "sub" / "unwatched3", "x")
        assert status() == truth(root, base) and status.full == 4  # what went unwatched is rescanned once
        _write(root / "d2" / "sub" / "watched", "x")
        assert status.fast() == truth(root, base)
    finally:
        shutil.rmtree(root / ".mic")  # the watcher exits when .mic goes
        thread.join(timeout=15)
        watcher.inotify.close()
        watcher.server.close()
    assert not thread.is_alive()
    assert "watching everything again" in capsys.readouterr().err


def test_watcher_exits_when_mic_is_removed(ws):
    root, _, status = ws
    pid = status.pid()
    shutil.rmtree(root / ".mic")
    wait_for(lambda: not alive(pid), what="the watcher to notice .mic is gone")


def test_watcher_exits_when_idle(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    make_workspace(root)
    status = Status(root, monkeypatch, WatchSettings(enabled=True, min_files=0, idle_timeout=1.0))
    status()
    pid = status.pid()
    assert alive(pid)
    wait_for(lambda: not alive(pid), timeout=8, what="the idle watcher to exit")
    assert not (root / ".mic" / SOCKET).exists()


def test_small_workspaces_start_no_watcher(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    base = make_workspace(root)
    status = Status(root, monkeypatch, WatchSettings(enabled=True, min_files=21, idle_timeout=60))
    _write(root / "d0" / "x", "x")
    assert status() == truth(root, base) and status.full == 1
    assert watcher_pids(tmp_path) == [] and not (root / ".mic" / SOCKET).exists()


def test_disabled_watcher_is_neither_asked_nor_started(ws, monkeypatch):
    root, base, _ = ws
    status = Status(root, monkeypatch, WatchSettings(enabled=False))
    _write(root / "d0" / "x", "x")
    assert status() == truth(root, base) and status.full == 1


def test_a_broken_watcher_never_makes_status_wrong(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    base = make_workspace(root)
    status = Status(root, monkeypatch)
    monkeypatch.setattr(client, "_ANSWER_TIMEOUT", 0.5)  # after Status, which sets a generous one
    answers = iter([b"garbage", json.dumps(["x"]).encode(), None])  # junk, wrong shape, then silence
    dot_fd = os.open(root / ".mic", os.O_PATH)
    server = socket.socket(socket.AF_UNIX)
    server.bind(f"/proc/self/fd/{dot_fd}/{SOCKET}")
    server.listen()

    def serve() -> None:
        for answer in answers:
            conn, _ = server.accept()
            conn.recv(100)
            if answer is None:
                time.sleep(2.0)  # past the client's patience
            else:
                conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for i in range(3):
            _write(root / "d0" / f"n{i}", "x")
            assert status() == truth(root, base) and status.full == i + 1
    finally:
        thread.join()
        server.close()
        os.close(dot_fd)
    assert watcher_pids(tmp_path) == []  # a socket that answers is taken to be a watcher: none was started


def test_a_watcher_that_cannot_start_costs_one_full_scan_not_a_wait(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    base = make_workspace(root)
    (root / ".mic" / "cookies").write_text("in the way of the watcher's cookie directory")
    status = Status(root, monkeypatch)
    _write(root / "d0" / "x", "x")
    started = time.monotonic()
    assert status() == truth(root, base) and status.full == 1
    assert time.monotonic() - started < 5  # not the client's whole start timeout
    assert watcher_pids(tmp_path) == [] and "failed" in (root / ".mic" / LOG).read_text()


def _landed_workspace(tmp_path: Path, mic) -> Path:
    """A 30-file workspace, initialised and landed through the CLI."""
    root = tmp_path / "ws"
    root.mkdir()
    for i in range(30):
        _write(root / f"d{i % 3}" / f"f{i}", f"{i}")
    mic(root, "init", "--project", "w")
    mic(root, "land", "initial")
    return root


def test_two_concurrent_statuses_start_one_watcher(tmp_path, local_store_env, mic):
    root = _landed_workspace(tmp_path, mic)
    _write(root / "d0" / "f0", "changed")
    env = {"MIC_WATCH_MIN_FILES": "0"}
    outs: list[list] = [[], []]
    threads = [threading.Thread(target=lambda o=o: o.append(run_mic(root, "status", "--json", env_extra=env)))
               for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [json.loads(o[0].stdout) for o in outs]
    assert results[0] == results[1] and [c["path"] for c in results[0]["changes"]] == ["d0/f0"]
    pid = int((root / ".mic" / PID).read_text())
    # a second watcher, had one started, exits on the lock (its teardown may outlast the status that forked it)
    wait_for(lambda: watcher_pids(tmp_path) == [pid], what="only the first watcher")
    client.start(root, 60)  # one more, for certain after the first: it finds the lock taken and leaves
    wait_for(lambda: watcher_pids(tmp_path) == [pid], what="the extra watcher to leave")
    assert int((root / ".mic" / PID).read_text()) == pid
    assert mic.json(root, "status")["changes"] == results[0]["changes"]


def test_land_and_status_through_the_cli_use_the_watcher(tmp_path, local_store_env, mic, monkeypatch):
    monkeypatch.setenv("MIC_WATCH_MIN_FILES", "0")
    root = _landed_workspace(tmp_path, mic)
    assert mic.json(root, "status")["changes"] == []
    pid = int((root / ".mic" / PID).read_text())
    _write(root / "d1" / "f1", "changed")
    (root / "d2" / "f2").unlink()
    _write(root / "d9" / "new", "new")
    landed = mic.json(root, "land", "three changes")
    assert sorted(landed["paths"]) == ["d1/f1", "d2/f2", "d9/new"]
    assert mic.json(root, "status")["changes"] == []
    _write(root / "d1" / "f1", "again")
    watched = mic.json(root, "status")
    monkeypatch.setenv("MIC_WATCH", "off")
    assert watched == mic.json(root, "status") and [c["path"] for c in watched["changes"]] == ["d1/f1"]
    assert watcher_pids(tmp_path) == [pid]


def test_watch_settings_are_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, bad in (("MIC_WATCH", "maybe"), ("MIC_WATCH_MIN_FILES", "-1"), ("MIC_WATCH_IDLE_TIMEOUT", "0"),
                     ("MIC_WATCH_IDLE_TIMEOUT", "soon")):
        monkeypatch.setenv(key, bad)
        with pytest.raises(ConfigError, match=key.removeprefix("MIC_").lower()):
            load_config()
        monkeypatch.delenv(key)
    monkeypatch.setenv("MIC_WATCH_IDLE_TIMEOUT", "2.5")
    settings = WatchSettings.from_config(load_config())
    assert settings.idle_timeout == 2.5 and settings.min_files == 10_000 and settings.enabled


def _random_op(rng: random.Random, root: Path) -> None:
    files = [p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and ".mic" not in p.parts]
    dirs = [p for p in root.rglob("*") if p.is_dir() and not p.is_symlink() and ".mic" not in p.parts]
    kind = rng.choice(["write", "write", "modify", "delete", "chmod", "symlink", "rename", "mkdir", "rmtree",
                       "mvdir"])
    name = f"n{rng.randrange(1000)}"
    if kind == "write" or (not files and kind in ("modify", "delete", "chmod", "rename")):
        parent = rng.choice([root, *dirs])
        _write(parent / name, name)
    elif kind == "modify":
        path = rng.choice(files)
        if not path.is_symlink():
            path.write_text(rng.choice(["a", "bb", path.name]))
    elif kind == "delete":
        rng.choice(files).unlink()
    elif kind == "chmod":
        path = rng.choice(files)
        if not path.is_symlink():
            os.chmod(path, rng.choice([0o644, 0o755]))
    elif kind == "symlink":
        os.symlink(rng.choice(["f", "../x", name]), rng.choice([root, *dirs]) / name)
    elif kind == "rename":
        os.rename(rng.choice(files), rng.choice([root, *dirs]) / name)
    elif kind == "mkdir":
        _write(rng.choice([root, *dirs]) / name / "m" / "file", name)
    elif kind == "rmtree" and dirs:
        shutil.rmtree(rng.choice(dirs))
    elif kind == "mvdir" and dirs:
        src = rng.choice(dirs)
        dst = rng.choice([root, *dirs]) / name
        if not dst.is_relative_to(src):
            os.rename(src, dst)


@pytest.mark.parametrize("seed", range(3))
def test_random_operation_sequences_match_a_full_scan(ws, seed):
    root, base, status = ws
    rng = random.Random(seed)
    for step in range(40):
        for _ in range(rng.randint(1, 4)):
            _random_op(rng, root)
        assert status.fast() == truth(root, base), (seed, step)
