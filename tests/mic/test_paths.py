"""One path rule (`mic.paths`) for scan, watcher, checkout, import and land: what one accepts, all others see."""

from __future__ import annotations

import os

import pytest

from mic.formats.btree_node import FileEntry
from mic.landing import land
from mic.objects import Project, content_hash
from mic.objectstore import open_store
from mic.paths import path_problem
from mic.session import start_session
from mic.statcache import Index, scan, scan_paths
from mickernel.errors import BadRequest
from tests.fixtures.tools import require_tool
from tests.mic.test_gitimport import git


def test_the_rule():
    assert path_problem("tools/.mic/settings.toml") is None
    assert path_problem("a/.mic") is None
    assert path_problem(".mic/config.toml") is not None
    for bad in (".git/config", "sub/.git/HEAD", "sub/.git", "", "/abs", "a//b", "a/../b", "./a"):
        assert path_problem(bad) is not None, bad


def test_mic_temp_names_are_never_tracked_at_any_depth():
    """`.<name>.<random>.mic-tmp` is a write in progress (or left by a killed one): never content."""
    for bad in (".big.bin.mic-tmp", ".big.bin.k3j_x9a2.mic-tmp", "sub/.a.txt.q1w2e3r4.mic-tmp", ".d.x.mic-tmp/f"):
        assert "temp file of mic's own" in path_problem(bad), bad
    for fine in ("a.mic-tmp", ".mic-tmp", "..mic-tmp", "sub/notes.mic-tmp", ".big.bin.mic-tmp.txt"):
        assert path_problem(fine) is None, fine


def test_scan_and_the_watchers_scan_skip_mic_temp_files(tmp_path):
    for rel in (".big.bin.mic-tmp", ".big.bin.k3j_x9a2.mic-tmp", "sub/.a.txt.q1w2e3r4.mic-tmp", "a.mic-tmp",
                "sub/kept.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    os.symlink("/etc/passwd", tmp_path / "sub" / ".l.mic-tmp")
    (tmp_path / ".mic").mkdir()
    index = Index(tmp_path / ".mic" / "index")
    assert sorted(scan(tmp_path, index).changes) == ["a.mic-tmp", "sub/kept.txt"]
    index = Index(tmp_path / ".mic" / "index")
    index.token = ("gen", 0)
    reported = [".big.bin.mic-tmp", "sub/.a.txt.q1w2e3r4.mic-tmp", "sub/.l.mic-tmp", "a.mic-tmp", "sub/kept.txt"]
    assert sorted(scan_paths(tmp_path, index, reported).changes) == ["a.mic-tmp", "sub/kept.txt"]


def test_scan_sees_a_nested_dot_mic_and_skips_git_at_any_depth(tmp_path):
    for rel in (
        ".mic/index-like",
        "tools/.mic/settings.toml",
        ".git/HEAD",
        "sub/.git/HEAD",
        "wt/.git",
        "a.txt",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    index = Index(tmp_path / ".mic" / "index")
    assert sorted(scan(tmp_path, index).changes) == ["a.txt", "tools/.mic/settings.toml"]
    # the watcher's path-by-path scan follows the same rule
    index = Index(tmp_path / ".mic" / "index")
    index.token = ("gen", 0)
    reported = [
        "tools/.mic/settings.toml",
        "wt/.git",
        "sub/.git/HEAD",
        ".mic/index-like",
        "sub/.git/",
        "tools/",
    ]
    assert sorted(scan_paths(tmp_path, index, reported).changes) == ["tools/.mic/settings.toml"]


async def test_land_refuses_a_git_or_root_mic_path_before_writing(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    project = Project(store, "p")
    await project.create(1)
    session = await start_session(project, "g", 0, 5)
    called = []
    for bad in ("sub/.git/config", ".mic/state.json", os.fsdecode(b"caf\xe9.txt"), "d/.big.bin.mic-tmp"):

        async def write_blobs() -> int:
            called.append(1)
            return 0

        changes = {bad: FileEntry(content_hash(b"x"), 1, 0)}
        with pytest.raises(BadRequest, match="cannot track"):
            await land(project, session, changes, {bad: "added"}, write_blobs, hlc=lambda t: t + 1)
        assert not called
    assert await project.landing(1) is None
    await store.close()


def test_a_nested_dot_mic_survives_import_checkout_and_an_unrelated_land(local_store_env, mic, tmp_path):
    require_tool("git")
    repo = tmp_path / "repo"
    (repo / "tools" / ".mic").mkdir(parents=True)
    (repo / "tools" / ".mic" / "settings.toml").write_text("x = 1\n")
    (repo / "README").write_text("hi\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    mic(tmp_path, "project", "create", "p")
    mic(tmp_path, "import", "git", str(repo), "--project", "p")
    ws = tmp_path / "ws"
    mic(tmp_path, "checkout", "p", str(ws))
    assert (ws / "tools" / ".mic" / "settings.toml").read_text() == "x = 1\n"
    assert mic.json(ws, "status")["changes"] == []

    (ws / "README").write_text("hello\n")
    mic(ws, "land", "edit the readme")
    listed = [e["path"] for e in mic.json(ws, "ls", "--recursive")["entries"]]
    assert listed == ["README", "tools/.mic/settings.toml"]
    assert mic.json(ws, "status")["changes"] == []


@pytest.mark.parametrize(
    ("path", "why"), [(".mic/config.toml", "own .mic directory"), (".big.bin.mic-tmp", "temp file of mic's own")]
)
def test_import_refuses_a_root_dot_mic_or_temp_path_naming_it(local_store_env, mic, tmp_path, path, why):
    require_tool("git")
    repo = tmp_path / "repo"
    (repo / path).parent.mkdir(parents=True)
    (repo / path).write_text("x\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    mic(tmp_path, "project", "create", "p")
    err = mic.json(tmp_path, "import", "git", str(repo), "--project", "p", code=2)
    assert repr(path) in err["error"] and why in err["error"] and "nothing was imported" in err["error"]
    assert mic.json(tmp_path, "log", "--project", "p")["landings"] == []


def test_checkout_never_writes_into_a_nested_git_directory(tmp_path):
    from mic.workspace import Workspace, WorkspaceState

    ws = Workspace(tmp_path, WorkspaceState("p", 0, ""))
    with pytest.raises(Exception, match="nested git repository"):
        ws.write_file("sub/.git/hooks/post-checkout", b"#!/bin/sh\n", 1)
    assert not os.path.exists(tmp_path / "sub")


def _store_files(store) -> set[str]:
    return {
        str(p.relative_to(store))
        for p in store.rglob("*")
        if p.is_file() and not p.name.endswith(".lock") and ".locks" not in p.parts and ".tmp" not in p.parts
    }


def test_a_non_utf8_file_name_is_a_clear_error_and_land_writes_nothing(local_store_env, mic, tmp_path):
    mic(tmp_path, "project", "create", "p")
    ws = tmp_path / "ws"
    mic(tmp_path, "checkout", "p", str(ws))
    (ws / "fine.txt").write_text("ok\n")
    with open(os.path.join(os.fsencode(ws), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"latin-1 name\n")
    before = _store_files(tmp_path / "store")
    for args in (["status"], ["land", "add files"]):
        err = mic.json(ws, *args, code=2)
        assert err["error"] == (
            "cannot track b'caf\\xe9.txt': its name is not valid UTF-8 (mic stores paths as UTF-8); rename it"
        )
    assert _store_files(tmp_path / "store") == before  # no session record, blob or landing
    os.rename(os.path.join(os.fsencode(ws), b"caf\xe9.txt"), ws / "cafe.txt")
    assert mic.json(ws, "land", "add files")["paths"] == ["cafe.txt", "fine.txt"]


def test_import_refuses_a_non_utf8_path_naming_it(local_store_env, mic, tmp_path):
    require_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"x\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    mic(tmp_path, "project", "create", "p")
    err = mic.json(tmp_path, "import", "git", str(repo), "--project", "p", code=2)
    assert "b'caf\\xe9.txt'" in err["error"] and "not valid UTF-8" in err["error"]
    assert mic.json(tmp_path, "log", "--project", "p")["landings"] == []
