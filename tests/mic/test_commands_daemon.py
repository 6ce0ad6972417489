"""`mic config show`, `mic stats`, `mic daemon …` as a user sees them.

CliRunner in process; the daemon is a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mic.cli import main
from mic.commands_daemon import format_bytes, stats_rows
from micd.config import KEYS
from tests.micd.test_lifecycle import micd  # noqa: F401 - fixture: a real daemon process

SNAPSHOT = {
    "pid": 42,
    "uptime_seconds": 12.0,
    "store": {"disk": {"used_bytes": 3 << 20, "entries": 4}, "queue": {"depth": 2}, "s3": {"state": "up"}},
    "metrics": {
        "series": {
            "bazel/disk/hit": {"count": 3, "bytes": 3000, "seconds": 0.1},
            "bazel/disk/miss": {"count": 1, "bytes": 0, "seconds": 0.0},
            "bazel/memory/hit": {"count": 6, "bytes": 600, "seconds": 0.0},
            "cas/all/put": {"count": 2, "bytes": 2048, "seconds": 0.0},
        },
        "gauges": {},
        "counters": {},
    },
}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(ws / "a" / "b")
    return ws


def test_config_show_attributes_every_source(workspace, monkeypatch):
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "mic" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[daemon]\nlog_level = "debug"\nidle_timeout = "5m"\n')
    (workspace / "mic.toml").write_text('[daemon]\nidle_timeout = "2m"\n[s3]\nbucket = "ws-bucket"\n')
    monkeypatch.setenv("MIC_S3_PREFIX", "team/")
    result = CliRunner().invoke(main, ["config", "show", "--json", "--memory-budget", "64MiB"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["store.memory_budget"] == {"value": 64 << 20, "source": "flag --memory-budget"}
    assert shown["s3.prefix"] == {"value": "team/", "source": "env MIC_S3_PREFIX"}
    assert shown["daemon.idle_timeout"] == {"value": 120.0, "source": str(workspace / "mic.toml")}
    assert shown["s3.bucket"]["source"] == str(workspace / "mic.toml")
    assert shown["daemon.log_level"] == {"value": "DEBUG", "source": str(user)}
    assert shown["store.disk_hard_cap"]["source"] == "default"
    assert shown["workspace"]["value"] == str(workspace)

    text = CliRunner().invoke(main, ["config", "show"]).output
    line = next(line for line in text.splitlines() if line.startswith("s3.prefix"))
    assert "team/" in line and "(env MIC_S3_PREFIX)" in line
    assert len(text.splitlines()) == len(shown)


def test_config_show_lists_every_key_of_both_halves(workspace, monkeypatch):
    (workspace / ".mic").mkdir()
    (workspace / ".mic" / "config.toml").write_text('[vcs]\nstore_url = "file:///checked/out"\n')
    (workspace / "mic.toml").write_text('[vcs]\nwatch = "off"\n[tools.bazel]\ninstance_name = "ci"\n')
    monkeypatch.setenv("MIC_WATCH_MIN_FILES", "50")
    shown = json.loads(CliRunner().invoke(main, ["config", "show", "--json"]).stdout)
    assert list(shown) == [key.name for key in KEYS] + ["workspace"]
    dot_mic = str(workspace / ".mic" / "config.toml")
    assert shown["vcs.store_url"] == {"value": "file:///checked/out", "source": dot_mic}
    assert shown["vcs.watch"] == {"value": False, "source": str(workspace / "mic.toml")}
    assert shown["vcs.watch_min_files"] == {"value": 50, "source": "env MIC_WATCH_MIN_FILES"}
    assert shown["vcs.watch_idle_timeout"] == {"value": 1800.0, "source": "default"}
    assert shown["tools.bazel.instance_name"] == {"value": "ci", "source": str(workspace / "mic.toml")}
    text = CliRunner().invoke(main, ["config", "show"]).stdout
    assert any(line.startswith("vcs.store_url") and "file:///checked/out" in line for line in text.splitlines())
    assert len(text.splitlines()) == len(shown)


def test_config_errors_are_reported_not_raised(workspace, monkeypatch):
    monkeypatch.setenv("MIC_DISK_HARD_CAP", "banana")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code != 0
    assert "store.disk_hard_cap (from env MIC_DISK_HARD_CAP)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_status_when_not_running(workspace):
    result = CliRunner().invoke(main, ["daemon", "status", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["running"] is False
    assert CliRunner().invoke(main, ["stats"]).exit_code != 0
    stop = CliRunner().invoke(main, ["daemon", "stop", "--json"])
    assert stop.exit_code == 0 and json.loads(stop.output) == {"stopped": False, "pid": None}


def test_stats_rows_and_ratio():
    rows = {(r["tool"], r["tier"]): r for r in stats_rows(SNAPSHOT)}
    assert rows[("bazel", "disk")]["hits"] == 3 and rows[("bazel", "disk")]["misses"] == 1
    assert rows[("bazel", "disk")]["hit_ratio"] == 0.75
    assert rows[("bazel", "memory")]["hit_ratio"] == 1.0
    assert rows[("cas", "all")]["hit_ratio"] is None and rows[("cas", "all")]["put_bytes"] == 2048


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (3 << 20, "3.0 MiB"), (5 << 40, "5.0 TiB")],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_stats_table_and_json_from_a_running_daemon(micd, tmp_path, monkeypatch):  # noqa: F811
    daemon = micd()
    data = b"counted bytes" * 100
    path = f"/cas/sha256/{hashlib.sha256(data).hexdigest()}/{len(data)}"
    assert daemon.request("PUT", path, data)[0] == 201
    assert daemon.request("GET", path)[0] == 200
    missing = b"never stored"
    assert (
        daemon.request("GET", f"/cas/sha256/{hashlib.sha256(missing).hexdigest()}/{len(missing)}")[0] == 404
    )
    monkeypatch.setenv("MIC_STATE_DIR", str(daemon.state))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["pid"] == daemon.info["pid"]
    assert "disk" in stats["store"]
    rows = {(r["tool"], r["tier"]): r for r in stats["rows"]}
    cas_hits = sum(r["hits"] for (tool, _), r in rows.items() if tool == "cas")
    cas_misses = sum(r["misses"] for (tool, _), r in rows.items() if tool == "cas")
    assert cas_hits >= 1 and cas_misses >= 1

    table = CliRunner().invoke(main, ["stats"]).output
    header = table.splitlines()[0].split()
    assert header[:4] == ["tool", "tier", "hits", "misses"]
    assert any(line.startswith("cas") for line in table.splitlines()[1:])
    assert "store:" in table and "disk.used_bytes" in table
    budget = next(line for line in table.splitlines() if line.strip().startswith("memory.budget"))
    assert budget.split()[-2:] == ["128.0", "MiB"]  # sizes are shown human-readable
    assert daemon.stop() == 0


def test_daemon_run_prints_endpoints_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    from tests.micd.test_lifecycle import daemon_env, read_line

    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mic"), "daemon", "run"],
        cwd=tmp_path,
        env=daemon_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )  # unbuffered: read_line selects on the pipe itself
    try:
        lines = [read_line(process) for _ in range(5)]
        assert lines[0].startswith("micd pid ")
        assert lines[1].split()[0] == "http" and lines[1].split()[1].startswith("http://127.0.0.1:")
        assert lines[2].split()[0] == "grpc" and lines[2].split()[1].startswith("grpc://127.0.0.1:")
        assert str(tmp_path / "state" / "token") in lines[3]
        ports = json.loads((tmp_path / "state" / "ports.json").read_text())
        assert ports["http"] == lines[1].split()[1] and ports["pid"] == process.pid  # exec'd: same process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
