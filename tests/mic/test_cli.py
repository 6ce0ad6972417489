"""End-to-end CLI tests, run against both stores (local directory and moto S3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

COMMANDS = [
    ["init"], ["project", "create"], ["project", "list"], ["checkout"], ["status"], ["land"], ["log"], ["show"],
    ["cat"], ["ls"], ["diff"], ["import", "git"], ["session", "start"], ["session", "status"],
    ["session", "list"], ["session", "note"], ["session", "decide"], ["session", "abandon"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_every_command_has_help_and_json(command, mic, tmp_path):
    out = mic(tmp_path, *command, "--help").stdout
    assert "--json" in out and "Usage:" in out


def test_full_session_lifecycle(store_env, mic, tmp_path):
    ws = tmp_path / "w"
    ws.mkdir()
    (ws / "a.txt").write_text("one\ntwo\n")
    (ws / "src").mkdir()
    (ws / "src" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ws / "src" / "run.sh", 0o755)
    os.symlink("a.txt", ws / "link")
    assert mic.json(ws, "init", "--project", "demo")["project"] == "demo"
    st = mic.json(ws, "status")
    assert {c["path"]: c["kind"] for c in st["changes"]} == {"a.txt": "added", "src/run.sh": "added", "link": "added"}

    sid = mic.json(ws, "session", "start", "set up the demo")["id"]
    mic(ws, "session", "note", "please keep it small", "--role", "human")
    mic(ws, "session", "note", "will do")
    mic(ws, "session", "decide", "shell script", "--why", "no build step", "--alternative", "python",
        "--alternative", "make")
    landed = mic.json(ws, "land")
    assert landed["position"] == 1 and landed["session"] == sid and landed["paths"] == ["a.txt", "link", "src/run.sh"]
    assert mic.json(ws, "status")["changes"] == []

    shown = mic.json(ws, "show", sid[:6])
    assert shown["goal"] == "set up the demo" and shown["status"] == "landed" and shown["landed"] == 1
    assert [(m["role"], m["text"]) for m in shown["conversation"]] == [
        ("human", "please keep it small"), ("agent", "will do")]
    assert shown["decisions"] == [{"what": "shell script", "why": "no build step",
                                   "alternatives": ["python", "make"], "hlc": shown["decisions"][0]["hlc"]}]
    assert shown["conversation"][0]["hlc"] < shown["conversation"][1]["hlc"] < shown["decisions"][0]["hlc"]
    assert {c["path"]: c["kind"] for c in shown["changes"]} == {"a.txt": "added", "link": "added",
                                                                "src/run.sh": "added"}

    (ws / "a.txt").write_text("one\nTWO\n")
    (ws / "src" / "run.sh").unlink()
    mic(ws, "session", "start", "edit things")
    second = mic.json(ws, "land", "edit a, drop run.sh")  # a goal given at land time refines the session's
    assert second["position"] == 2
    assert mic.json(ws, "show", second["session"])["goal"] == "edit a, drop run.sh"

    log = mic.json(ws, "log", "-n", "5")["landings"]
    assert [(r["position"], r["goal"]) for r in log] == [(2, "edit a, drop run.sh"), (1, "set up the demo")]
    assert mic(ws, "cat", "a.txt", "@1").stdout == "one\ntwo\n"
    assert mic(ws, "cat", "a.txt").stdout == "one\nTWO\n"
    assert mic.json(ws, "cat", "link", "@1")["text"] == "a.txt"
    assert [e["path"] for e in mic.json(ws, "ls", "@1")["entries"]] == ["a.txt", "link", "src/"]
    assert mic.json(ws, "ls", "src", "@1")["entries"] == [{"path": "src/run.sh", "size": 18, "type": "exec"}]
    diff = mic(ws, "diff", "@1", "@2").stdout
    assert "-two\n+TWO\n" in diff and "--- 1/src/run.sh\n+++ /dev/null" in diff

    (ws / "a.txt").write_text("one\nTWO\nthree\n")
    assert "+three" in mic(ws, "diff").stdout
    assert "-two" in mic(ws, "diff", "@1").stdout

    other = tmp_path / "other"
    out = mic.json(tmp_path, "checkout", "demo", str(other))
    assert out["position"] == 2 and out["files"] == 2
    assert (other / "a.txt").read_text() == "one\nTWO\n"
    assert os.readlink(other / "link") == "a.txt"
    assert mic.json(other, "status")["changes"] == []
    assert next(s["id"] for s in mic.json(other, "session", "list")["sessions"]) == sid


def test_conflicting_land_prints_paths_and_sessions_and_changes_nothing(store_env, mic, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "shared.txt").write_text("base\n")
    mic(a, "init", "--project", "p")
    mic(a, "land", "base")
    mic(tmp_path, "checkout", "p", str(b))
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    (b / "own.txt").write_text("b only\n")
    winner = mic.json(a, "land", "a edits")
    err = mic.json(b, "land", "b edits", code=3)
    assert err["kind"] == "Conflict" and err["paths"] == ["shared.txt"] and err["sessions"] == [winner["session"]]
    human = mic(b, "land", code=3)
    assert "shared.txt" in human.stderr and winner["session"] in human.stderr
    log = mic.json(b, "log")
    assert log["tip"] == 2
    assert mic(b, "cat", "shared.txt", "@2").stdout == "from a\n"
    assert mic.json(b, "ls", "@2")["entries"] == [{"path": "shared.txt", "size": 7, "type": "file"}]


def test_disjoint_lands_roll_the_other_workspace_forward(store_env, mic, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x").write_text("x\n")
    mic(a, "init", "--project", "p")
    mic(a, "land", "x")
    mic(tmp_path, "checkout", "p", str(b))
    (a / "from_a").write_text("a\n")
    (b / "from_b").write_text("b\n")
    mic(a, "land", "a adds")
    out = mic.json(b, "land", "b adds")
    assert out["position"] == 3 and out["synced_from_others"] == 1
    assert (b / "from_a").read_text() == "a\n"
    assert mic.json(b, "status")["changes"] == []


def test_bad_input_is_reported_clearly(local_store_env, mic, tmp_path):
    err = mic.json(tmp_path, "status", code=1)
    assert "not in a mic workspace" in err["error"]
    err = mic.json(tmp_path, "checkout", "nope", str(tmp_path / "n"), code=4)
    assert "mic project create nope" in err["error"]
    mic(tmp_path, "project", "create", "Bad Name", code=2)
    assert mic.json(tmp_path, "project", "list")["projects"] == []
    mic(tmp_path, "project", "create", "ok")
    mic(tmp_path, "project", "create", "also")
    assert mic.json(tmp_path, "project", "list")["projects"] == ["also", "ok"]
    err = mic.json(tmp_path, "project", "create", "ok", code=1)
    assert "already exists" in err["error"]
    ws = tmp_path / "w"
    mic(tmp_path, "checkout", "ok", str(ws))
    assert "nothing to land" in mic.json(ws, "land", "x", code=1)["error"]
    (ws / "f").write_text("f")
    assert "give a goal" in mic.json(ws, "land", code=2)["error"]
    assert "no active session" in mic.json(ws, "session", "note", "hi", code=1)["error"]
    mic(ws, "session", "decide", "x", code=2)  # --why is required
    mic(ws, "cat", "f", "@x", code=2)
    assert "does not exist" in mic.json(ws, "cat", "missing", code=4)["error"]
    assert "nothing has landed" in mic.json(ws, "ls", "@7", code=4)["error"]
    mic(ws, "session", "start", "g")
    assert "already active" in mic.json(ws, "session", "start", "h", code=1)["error"]
    mic(ws, "session", "abandon")
    assert mic.json(ws, "session", "list")["sessions"][0]["status"] == "abandoned"


def test_bad_store_url_names_the_setting(mic, tmp_path, monkeypatch):
    monkeypatch.setenv("MIC_STORE_URL", "ftp://x")
    err = mic.json(tmp_path, "project", "list", code=2)
    assert "vcs.store_url" in err["error"] and "from env" in err["error"]


def test_missing_s3_credentials_say_what_to_set(mic, tmp_path, monkeypatch, s3_server):
    monkeypatch.setenv("MIC_STORE_URL", "s3://nobucket/x")
    monkeypatch.setenv("MIC_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    err = mic.json(tmp_path, "project", "create", "p", code=4)
    assert "AWS_ACCESS_KEY_ID" in err["error"] and "AWS_SECRET_ACCESS_KEY" in err["error"]


def test_missing_s3_bucket_says_what_to_create(mic, tmp_path, monkeypatch, s3_server, s3_env):
    monkeypatch.setenv("MIC_STORE_URL", "s3://no-such-bucket/x")
    monkeypatch.setenv("MIC_S3_ENDPOINT_URL", s3_server.endpoint_url)
    err = mic.json(tmp_path, "project", "create", "p", code=4)
    assert "no-such-bucket" in err["error"] and "MIC_STORE_URL" in err["error"]


def test_corrupted_blob_is_detected_by_its_hash(local_store_env, mic, tmp_path):
    ws = tmp_path / "w"
    ws.mkdir()
    (ws / "f.txt").write_text("precious\n")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "add f")
    store = Path(local_store_env["MIC_STORE_URL"][len("file://"):])
    from mic.formats.blob import encode_blob

    blobs = list((store / "p" / "blobs").rglob("*"))
    blob = next(b for b in blobs if b.is_file())
    os.chmod(blob, 0o644)
    blob.write_bytes(encode_blob(b"tampered\n"))
    err = mic.json(ws, "cat", "f.txt", code=1)
    assert err["kind"] == "IntegrityError" and "does not match its digest" in err["error"]


def test_unreachable_s3_endpoint_says_what_to_set(mic, tmp_path, monkeypatch, s3_env):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MIC_STORE_URL", "s3://bucket/x")
    monkeypatch.setenv("MIC_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    err = mic.json(tmp_path, "project", "list", code=4)
    assert "MIC_S3_ENDPOINT_URL" in err["error"]
