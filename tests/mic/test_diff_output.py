"""`mic diff` shows what is (or would be) stored, git-style: symlinks as their target, lines split on "\\n" only,
mode changes as `old mode`/`new mode`; the patch applies with `git apply`."""

from __future__ import annotations

import os
import subprocess

from tests.fixtures.tools import require_tool


def _ws(mic, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("x\n")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "first")
    return ws


def test_dangling_symlink_is_diffed_as_its_target(local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    os.symlink("nowhere", ws / "dangling")
    [chunk] = mic.json(ws, "diff")["files"]
    assert chunk["path"] == "dangling" and chunk["new_mode"] == "120000"
    assert "new file mode 120000\n" in chunk["diff"]
    assert "+nowhere\n\\ No newline at end of file\n" in chunk["diff"]
    assert "+nowhere" in mic(ws, "diff").stdout


def test_symlink_shows_the_link_not_the_target_content(local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    os.symlink("a.txt", ws / "link")
    diff = mic.json(ws, "diff")["files"][0]["diff"]
    assert "+a.txt\n" in diff and "+x" not in diff
    mic(ws, "land", "link")
    assert mic(ws, "cat", "link").stdout == "a.txt"  # what the diff showed is what was stored


def test_only_newline_splits_lines(local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    (ws / "a.txt").write_text("x\n\x0cpage2 \x0b\x1c\x85\u2028tail\n")
    diff = mic.json(ws, "diff")["files"][0]["diff"]
    assert "No newline" not in diff
    assert diff.endswith("@@ -1 +1,2 @@\n x\n+\x0cpage2 \x0b\x1c\x85\u2028tail\n")


def test_mode_only_change_is_shown(local_store_env, mic, tmp_path):
    ws = _ws(mic, tmp_path)
    os.chmod(ws / "a.txt", 0o755)
    [chunk] = mic.json(ws, "diff")["files"]
    assert (chunk["old_mode"], chunk["new_mode"]) == ("100644", "100755")
    assert chunk["diff"] == "diff --git base/a.txt workspace/a.txt\nold mode 100644\nnew mode 100755\n"
    mic(ws, "land", "make it executable")
    assert mic(ws, "diff", "@1", "@2").stdout == "diff --git 1/a.txt 2/a.txt\nold mode 100644\nnew mode 100755\n"


def test_the_patch_applies_with_git_apply(local_store_env, mic, tmp_path):
    """Every kind of change at once; applying mic's patch to the base gives the workspace, modes and links too."""
    require_tool("git")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("one\ntwo\n")
    (ws / "run.sh").write_text("echo\n")
    (ws / "gone.txt").write_text("bye\n")
    (ws / "becomes_link").write_text("plain\n")
    os.symlink("a.txt", ws / "becomes_file")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "base")
    mic(tmp_path, "checkout", "p", str(tmp_path / "applied"))

    (ws / "a.txt").write_text("one\n\x0ctwo\u2028still two\n")
    os.chmod(ws / "run.sh", 0o755)
    (ws / "gone.txt").unlink()
    (ws / "becomes_link").unlink()
    os.symlink("run.sh", ws / "becomes_link")
    (ws / "becomes_file").unlink()
    (ws / "becomes_file").write_text("now a file\n")
    (ws / "new.sh").write_text("#!/bin/sh\n")
    os.chmod(ws / "new.sh", 0o755)
    os.symlink("nowhere", ws / "dangling")
    patch = mic(ws, "diff").stdout_bytes

    applied = tmp_path / "applied"
    done = subprocess.run(["git", "apply", "-"], check=False, input=patch, cwd=applied, capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stderr, patch)
    for name in ("a.txt", "run.sh", "becomes_file", "new.sh"):
        assert (applied / name).read_bytes() == (ws / name).read_bytes(), name
        assert os.stat(applied / name).st_mode & 0o111 == os.stat(ws / name).st_mode & 0o111, name
    assert os.readlink(applied / "becomes_link") == "run.sh" and os.readlink(applied / "dangling") == "nowhere"
    assert not (applied / "gone.txt").exists()
    assert mic.json(applied, "status")["changes"] == mic.json(ws, "status")["changes"]
