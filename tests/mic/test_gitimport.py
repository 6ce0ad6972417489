"""`mic import git`: every first-parent commit becomes one landed session whose goal is the commit message."""

from __future__ import annotations

import os
import subprocess

from tests.fixtures.tools import require_tool


def git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env).stdout


def test_import_git_history(local_store_env, mic, tmp_path):
    require_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    (repo / "tool.sh").write_text("#!/bin/sh\n")
    os.chmod(repo / "tool.sh", 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first commit\n\nwith a body")
    (repo / "README").write_text("hello again\n")
    os.symlink("README", repo / "link")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    (repo / "tool.sh").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "remove the tool")
    git(repo, "commit", "-q", "--allow-empty", "-m", "empty commit")

    mic(tmp_path, "project", "create", "imp")
    out = mic.json(tmp_path, "import", "git", str(repo), "--project", "imp")
    assert out["commits"] == 4 and (out["first"], out["last"]) == (1, 3)
    log = mic.json(tmp_path, "log", "--project", "imp")["landings"]
    assert [(r["position"], r["goal"]) for r in log] == [
        (3, "remove the tool"), (2, "second"), (1, "first commit\n\nwith a body")]
    assert mic(tmp_path, "cat", "README", "@1", "--project", "imp").stdout == "hello\n"
    assert mic(tmp_path, "cat", "README", "@3", "--project", "imp").stdout == "hello again\n"
    assert mic.json(tmp_path, "ls", "@1", "--project", "imp")["entries"] == [
        {"path": "README", "size": 6, "type": "file"}, {"path": "tool.sh", "size": 10, "type": "exec"}]
    assert [e["path"] for e in mic.json(tmp_path, "ls", "@3", "--project", "imp")["entries"]] == ["README", "link"]
    shown = mic.json(tmp_path, "show", "@2", "--project", "imp")
    assert shown["status"] == "landed" and {c["path"]: c["kind"] for c in shown["changes"]} == {
        "README": "modified", "link": "added"}
    ws = tmp_path / "ws"
    mic(tmp_path, "checkout", "imp", str(ws))
    assert os.readlink(ws / "link") == "README" and mic.json(ws, "status")["changes"] == []


def test_import_rejects_a_non_repository(local_store_env, mic, tmp_path):
    mic(tmp_path, "project", "create", "imp")
    (tmp_path / "plain").mkdir()
    err = mic.json(tmp_path, "import", "git", str(tmp_path / "plain"), "--project", "imp", code=2)
    assert "not a git repository" in err["error"]
