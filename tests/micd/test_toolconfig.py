"""micd.toolconfig: every frontend's client files and the environment file (content, mode 0600, atomic
replace, refusal of collisions, removal), and Bazel's generated bazelrc."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.toolconfig import remove_client_configs, write_client_configs
from protocols import bazel


def _context(token: str = "t", instance_name: str = "") -> ClientContext:
    return ClientContext(
        url="http://127.0.0.1:2/bazel",
        http_url="http://127.0.0.1:2",
        grpc_url="grpc://127.0.0.1:1",
        token=token,
        state_dir=Path("/state"),
        settings={"instance_name": instance_name},
    )


def _write(tmp_path: Path, frontends, **ports) -> list[Path]:
    return write_client_configs(
        tmp_path, frontends, token="tok-en_1", settings=lambda name: {}, **{"http_port": 5678, "grpc_port": 1234, **ports}
    )


def test_files_and_environment_are_written_private_and_removed(tmp_path):
    written = _write(tmp_path, [bazel.FRONTEND])
    assert sorted(p.name for p in written) == ["bazelrc", "env.json"]
    text = (tmp_path / "bazelrc").read_text()
    assert "build --remote_cache=grpc://127.0.0.1:1234\n" in text
    assert 'build "--remote_header=Authorization=Bearer tok-en_1"\n' in text
    assert "build:mic-http --remote_cache=http://127.0.0.1:5678/bazel\n" in text  # the frontend's prefix
    env = json.loads((tmp_path / "env.json").read_text())
    assert env == {"version": 1, "env": {"MIC_BAZELRC": str(tmp_path / "bazelrc")}}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _write(tmp_path, [bazel.FRONTEND], grpc_port=1)
    assert "grpc://127.0.0.1:1\n" in (tmp_path / "bazelrc").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bazelrc", "env.json"]  # no temp file left
    remove_client_configs(written)
    remove_client_configs(written)
    assert list(tmp_path.iterdir()) == []


def _tool(name: str, files=None, env=None) -> Frontend:
    return Frontend(name=name, client=lambda context: ClientConfig(files=files or {}, env=env or {}))


@pytest.mark.parametrize(
    "frontends",
    [
        [_tool("a", env={"X": "1"}), _tool("b", env={"X": "2"})],  # one variable, two owners
        [_tool("a", files={"rc": ""}), _tool("b", files={"rc": ""})],  # one file, two owners
        [_tool("a", files={"env.json": "{}"})],  # the daemon's own file
        [_tool("a", files={"../escape": ""})],
        [_tool("a", files={".hidden": ""})],
        [_tool("a", env={"not-a-name": "1"})],
    ],
)
def test_collisions_and_bad_names_are_refused_before_anything_is_written(tmp_path, frontends):
    with pytest.raises(ValueError):
        _write(tmp_path, frontends)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("token", ["", "a b", "a\nbuild --x", 'q"'])
def test_tokens_that_would_break_the_bazelrc_are_refused(token):
    with pytest.raises(ValueError):
        bazel.bazelrc_text(_context(token))


def test_bazelrc_instance_name_line():
    assert "build --remote_instance_name=main/inst\n" in bazel.bazelrc_text(_context(instance_name="main/inst"))
    assert "remote_instance_name" not in bazel.bazelrc_text(_context())
