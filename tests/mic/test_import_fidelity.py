"""`mic import git` lands exactly git's tree at every commit: type changes, submodules, a non-empty project."""

from __future__ import annotations

import os
import shutil

from tests.fixtures.tools import require_tool
from tests.mic.test_gitimport import git

_TYPES = {"file": 0, "exec": 1, "symlink": 2}
_GIT_MODES = {b"100644": 0, b"100755": 1, b"120000": 2}


def _commit(repo, message):
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def _git_tree(repo, sha):
    """path → (mode, bytes) of every blob in commit `sha` (submodules have no blob and are left out)."""
    out = {}
    for record in git(repo, "ls-tree", "-r", "-z", sha).split(b"\0"):
        if not record:
            continue
        meta, path = record.split(b"\t", 1)
        mode, kind, obj = meta.split()
        if kind == b"blob":
            out[path.decode()] = (_GIT_MODES[mode], git(repo, "cat-file", "blob", obj.decode()))
    return out


def _mic_tree(mic, cwd, pos):
    out = {}
    for entry in mic.json(cwd, "ls", "-r", f"@{pos}", "--project", "imp")["entries"]:
        data = mic(cwd, "cat", entry["path"], f"@{pos}", "--project", "imp").stdout_bytes
        out[entry["path"]] = (_TYPES[entry["type"]], data)
    return out


def test_every_landing_equals_its_commit_through_type_changes_and_submodules(local_store_env, mic, tmp_path):
    require_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "x").write_text("file x\n")
    (repo / "l").write_text("was a file\n")
    (repo / "run").write_text("echo\n")
    (repo / "sub").write_text("will be a submodule\n")
    _commit(repo, "c1")
    (repo / "x").unlink()
    (repo / "x").mkdir()
    (repo / "x" / "y").write_text("now a dir\n")
    (repo / "l").unlink()
    os.symlink("x/y", repo / "l")
    os.chmod(repo / "run", 0o755)
    _commit(repo, "type changes")
    subrepo = tmp_path / "subrepo"
    subrepo.mkdir()
    git(subrepo, "init", "-q")
    (subrepo / "f").write_text("s\n")
    _commit(subrepo, "s")
    git(repo, "rm", "-q", "--cached", "sub")
    (repo / "sub").unlink()
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(subrepo), "sub")
    _commit(repo, "sub becomes a submodule")  # diff-tree: T 100644 -> 160000
    git(repo, "rm", "-q", "-f", "sub")
    (repo / "other.txt").write_text("o\n")
    _commit(repo, "drop the submodule")  # diff-tree: D 160000

    mic(tmp_path, "project", "create", "imp")
    out = mic.json(tmp_path, "import", "git", str(repo), "--project", "imp")
    shas = git(repo, "log", "--first-parent", "--reverse", "--format=%H").decode().split()
    assert (out["first"], out["last"]) == (1, len(shas))
    for pos, sha in enumerate(shas, 1):
        assert _mic_tree(mic, tmp_path, pos) == _git_tree(repo, sha), f"@{pos} differs from {sha}"
    assert out["skipped_submodules"] == 2  # the gitlink's arrival and its removal
    assert {c["path"]: c["kind"] for c in mic.json(tmp_path, "show", "@3", "--project", "imp")["changes"]} == {
        ".gitmodules": "added", "sub": "deleted"}  # the file that became a submodule
    assert {c["path"]: c["kind"] for c in mic.json(tmp_path, "show", "@4", "--project", "imp")["changes"]} == {
        ".gitmodules": "modified", "other.txt": "added"}  # no "deleted sub": mic never had the submodule


def test_submodule_that_becomes_a_file_is_added(local_store_env, mic, tmp_path):
    require_tool("git")
    sub = tmp_path / "subrepo"
    sub.mkdir()
    git(sub, "init", "-q")
    _commit(sub, "s")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    _commit(repo, "add a submodule")
    git(repo, "rm", "-q", "--cached", "sub")
    git(repo, "rm", "-q", "--cached", ".gitmodules")
    (repo / ".gitmodules").unlink()
    shutil.rmtree(repo / "sub")
    (repo / "sub").write_text("a plain file now\n")
    _commit(repo, "the submodule becomes a file")  # diff-tree: T 160000 -> 100644 (or D + A)
    mic(tmp_path, "project", "create", "imp")
    text = mic(tmp_path, "import", "git", str(repo), "--project", "imp").output
    assert "submodule entries skipped" in text
    shas = git(repo, "log", "--format=%H", "--reverse").decode().split()
    for pos, sha in enumerate(shas, 1):
        assert _mic_tree(mic, tmp_path, pos) == _git_tree(repo, sha)
    assert mic.json(tmp_path, "show", "@2", "--project", "imp")["changes"] == [
        {"kind": "deleted", "path": ".gitmodules"}, {"kind": "added", "path": "sub"}]


def test_import_refuses_a_project_that_is_not_empty(local_store_env, mic, tmp_path):
    """Commits land as diffs; on top of other content the trees would silently differ from git's."""
    require_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a").write_text("a\n")
    _commit(repo, "c1")
    (repo / "b").write_text("b\n")
    _commit(repo, "c2")
    mic(tmp_path, "project", "create", "imp")
    assert mic.json(tmp_path, "import", "git", str(repo), "--project", "imp")["last"] == 2

    err = mic.json(tmp_path, "import", "git", str(repo), "--project", "imp", code=2)
    assert "not empty (tip @2)" in err["error"] and "mic project create" in err["error"]
    assert [r["position"] for r in mic.json(tmp_path, "log", "--project", "imp")["landings"]] == [2, 1]

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "own.txt").write_text("mine\n")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "own work")
    err = mic.json(tmp_path, "import", "git", str(repo), "--project", "p", code=2)
    assert "not empty (tip @1)" in err["error"]
    assert [e["path"] for e in mic.json(tmp_path, "ls", "@1", "--project", "p")["entries"]] == ["own.txt"]
