"""One CLI contract for every `mic` command: one error path, the same exit codes, one JSON shape under --json.

The command list is walked from the root group, so a new command without a row in ARGS fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mic.cli import main


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _leaf_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


# The arguments each command needs to get past click's own parsing (so the configuration is what fails).
ARGS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("cat",): ("some/path",),
    ("checkout",): ("proj", "dir"),
    ("config", "show"): (),
    ("daemon", "run"): (),
    ("daemon", "start"): (),
    ("daemon", "status"): (),
    ("daemon", "stop"): (),
    ("diff",): (),
    ("import", "git"): (".",),
    ("init",): (),
    ("land",): ("goal",),
    ("log",): (),
    ("ls",): (),
    ("project", "create"): ("proj",),
    ("project", "list"): (),
    ("resolve",): ("some/path",),
    ("session", "abandon"): (),
    ("session", "decide"): ("what", "--why", "because"),
    ("session", "list"): (),
    ("session", "note"): ("a note",),
    ("session", "start"): ("a goal",),
    ("session", "status"): (),
    ("show",): ("0123456789ab",),
    ("stats",): (),
    ("status",): (),
}

# Each way to break the configuration, and the key the error must name.
BAD_CONFIG = {
    "bad store url": ({"MIC_STORE_URL": "http://not-a-store"}, None, "vcs.store_url (from env MIC_STORE_URL)"),
    "bad daemon setting": ({"MIC_MEMORY_BUDGET": "lots"}, None, "store.memory_budget (from env MIC_MEMORY_BUDGET)"),
    "bad mic.toml": ({}, "[vcs]\nwatch = 'maybe'\n", "vcs.watch (from "),
    "broken mic.toml": ({}, "[store\n", "mic.toml: not valid TOML"),
}


def test_every_command_has_a_row():
    assert sorted(_leaf_commands(main)) == sorted(ARGS)


def _run(tmp_path: Path, monkeypatch, name: str, command: tuple[str, ...], *extra: str):
    env, toml, _ = BAD_CONFIG[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if toml is not None:
        (tmp_path / "mic.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(main, [*command, *ARGS[command], *extra])


@pytest.mark.parametrize("name", BAD_CONFIG)
@pytest.mark.parametrize("command", sorted(ARGS), ids=" ".join)
def test_config_error_is_one_json_object_on_stdout_and_exit_2(tmp_path, monkeypatch, command, name):
    result = _run(tmp_path, monkeypatch, name, command, "--json")
    assert result.exit_code == 2, result.output
    assert result.stderr == ""
    error = json.loads(result.stdout)
    assert set(error) == {"error", "kind"} and error["kind"] == "ConfigError"
    assert BAD_CONFIG[name][2] in error["error"]


@pytest.mark.parametrize("name", BAD_CONFIG)
@pytest.mark.parametrize("command", sorted(ARGS), ids=" ".join)
def test_config_error_without_json_is_one_line_on_stderr_and_exit_2(tmp_path, monkeypatch, command, name):
    result = _run(tmp_path, monkeypatch, name, command)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("mic: error: ") and result.stderr.count("\n") == 1
    assert BAD_CONFIG[name][2] in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("session", "start", "--json"),  # a missing argument
        ("daemon", "status", "--json", "--no-such-flag"),
        ("status", "--json", "--no-such-flag"),
        ("no-such-command", "--json"),
    ],
    ids=" ".join,
)
def test_usage_errors_under_json_are_json_too(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2
    assert result.stderr == ""
    assert json.loads(result.stdout)["kind"] == "UsageError"


def test_usage_errors_without_json_keep_clicks_usage_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["session", "start"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "Usage:" in result.stderr and "Missing argument" in result.stderr


def test_an_unreachable_daemon_is_an_operation_failure(tmp_path, monkeypatch):
    """No daemon: `mic stats` fails with exit 1 and, under --json, the same JSON shape."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 1 and result.stderr == ""
    assert json.loads(result.stdout) == {"error": json.loads(result.stdout)["error"], "kind": "DaemonError"}


def test_a_missing_project_is_exit_4_with_the_same_json_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("MIC_STORE_URL", f"file://{tmp_path / 'store'}")
    monkeypatch.chdir(tmp_path)
    for args in (["log", "--project", "nope"], ["checkout", "nope", "d"], ["ls", "--project", "nope"]):
        result = CliRunner().invoke(main, [*args, "--json"])
        assert result.exit_code == 4, (args, result.output)
        assert result.stderr == "" and set(json.loads(result.stdout)) == {"error", "kind"}
