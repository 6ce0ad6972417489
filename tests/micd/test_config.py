"""micd.config, the one configuration of mic and micd: precedence of every layer, source attribution,
validation messages, workspace discovery, the VCS and tool keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from micd.config import KEYS, load_config
from mickernel.errors import ConfigError


def _env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k in ("HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
    }
    return {**base, **extra}


@pytest.fixture
def layout(tmp_path: Path, clean_env: Path) -> dict[str, Path]:
    workspace = tmp_path / "ws"
    (workspace / "sub" / "deeper").mkdir(parents=True)
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "mic" / "config.toml"
    user.parent.mkdir(parents=True)
    return {
        "ws": workspace,
        "cwd": workspace / "sub" / "deeper",
        "user": user,
        "toml": workspace / "mic.toml",
    }


# Each row adds one layer; the highest layer present must win and be named as the source.
PRECEDENCE = [
    ("defaults only", set(), 128 << 20, "default"),
    ("user config", {"user"}, 1 << 20, "{user}"),
    ("workspace beats user", {"user", "toml"}, 2 << 20, "{toml}"),
    ("env beats files", {"user", "toml", "env"}, 3 << 20, "env MIC_MEMORY_BUDGET"),
    ("flag beats env", {"user", "toml", "env", "flag"}, 4 << 20, "flag --memory-budget"),
    ("flag alone", {"flag"}, 4 << 20, "flag --memory-budget"),
    ("env alone", {"env"}, 3 << 20, "env MIC_MEMORY_BUDGET"),
    ("workspace alone", {"toml"}, 2 << 20, "{toml}"),
]


@pytest.mark.parametrize(
    ("description", "layers", "expected", "source"), PRECEDENCE, ids=[r[0] for r in PRECEDENCE]
)
def test_precedence(layout, description, layers, expected, source):
    if "user" in layers:
        layout["user"].write_text('[store]\nmemory_budget = "1MiB"\n')
    if "toml" in layers:
        layout["toml"].write_text("[store]\nmemory_budget = 2097152\n")
    env = _env(MIC_MEMORY_BUDGET="3MiB") if "env" in layers else _env()
    flags = {"memory_budget": "4MiB"} if "flag" in layers else {}
    config = load_config(flags, cwd=layout["cwd"], env=env)
    assert config.memory_budget == expected
    assert config.source("memory_budget") == source.format(user=layout["user"], toml=layout["toml"])


def test_layers_mix_per_key(layout):
    layout["user"].write_text('[daemon]\nidle_timeout = "10m"\nlog_level = "debug"\n')
    layout["toml"].write_text('[daemon]\nidle_timeout = 30\n[s3]\nbucket = "team-cache"\n')
    config = load_config({"log_level": "error"}, cwd=layout["cwd"], env=_env(MIC_S3_PREFIX="p/q"))
    rows = {name: (value, source) for name, value, source in config.effective()}
    assert rows["daemon.idle_timeout"] == (30.0, str(layout["toml"]))
    assert rows["daemon.log_level"] == ("ERROR", "flag --log-level")
    assert rows["s3.bucket"] == ("team-cache", str(layout["toml"]))
    assert rows["s3.prefix"] == ("p/q", "env MIC_S3_PREFIX")
    assert rows["store.disk_hard_cap"][1] == "default"
    assert config.s3_enabled
    assert rows["workspace"][0] == str(layout["ws"])


def test_s3_off_without_bucket(layout):
    config = load_config(cwd=layout["cwd"], env=_env(MIC_S3_ENDPOINT_URL="http://127.0.0.1:9"))
    assert not config.s3_enabled and config.s3_bucket is None


def test_default_paths_follow_xdg(layout):
    config = load_config(cwd=layout["cwd"], env=_env())
    assert config.cache_dir == Path(os.environ["XDG_CACHE_HOME"]) / "mic" / "store"
    assert config.state_dir.parent == Path(os.environ["XDG_STATE_HOME"]) / "mic" / "sessions"
    assert config.state_dir.name == config.session


def test_session_is_stable_per_workspace_and_distinct_across(layout, tmp_path):
    layout["toml"].write_text("")
    first = load_config(cwd=layout["cwd"], env=_env())
    again = load_config(cwd=layout["ws"], env=_env())
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = load_config(cwd=other_dir, env=_env())
    assert first.session == again.session and first.state_dir == again.state_dir
    assert other.session != first.session
    assert "derived from workspace" in first.source("session")


def test_dot_mic_marks_the_workspace(layout):
    (layout["ws"] / ".mic").mkdir()
    assert load_config(cwd=layout["cwd"], env=_env()).workspace == layout["ws"]


def test_active_mic_session_owns_the_daemon(layout):
    (layout["ws"] / ".mic").mkdir()
    state = layout["ws"] / ".mic" / "state.json"
    state.write_text('{"project": "p", "base": 0, "base_tree": "", "session": "0123456789ab"}')
    config = load_config(cwd=layout["cwd"], env=_env())
    assert config.session == "0123456789ab" and config.state_dir.name == "0123456789ab"
    assert config.source("session") == f"active session in {state}"
    assert load_config(cwd=layout["cwd"], env=_env(MIC_SESSION="other")).session == "other"  # explicit wins
    state.write_text('{"project": "p", "base": 0, "base_tree": "", "session": null}')
    assert load_config(cwd=layout["cwd"], env=_env()).session.startswith("ws-")
    state.write_text("not json")  # a broken workspace file does not stop the daemon: per-workspace id
    assert load_config(cwd=layout["cwd"], env=_env()).session.startswith("ws-")


def test_explicit_session_and_state_dir(layout, tmp_path):
    config = load_config(cwd=layout["cwd"], env=_env(MIC_SESSION="s-123"))
    assert config.session == "s-123" and config.state_dir.name == "s-123"
    config = load_config(cwd=layout["cwd"], env=_env(MIC_STATE_DIR=str(tmp_path / "st")))
    assert config.state_dir == tmp_path / "st" and config.source("state_dir") == "env MIC_STATE_DIR"


def test_relative_paths_resolve_against_their_file(layout):
    layout["toml"].write_text('[store]\ndir = "cache-here"\n')
    config = load_config(cwd=layout["cwd"], env=_env())
    assert config.cache_dir == layout["ws"] / "cache-here"
    config = load_config({"cache_dir": "rel"}, cwd=layout["cwd"], env=_env())
    assert config.cache_dir == layout["cwd"] / "rel"


def test_xdg_config_home_is_respected(layout, tmp_path):
    elsewhere = tmp_path / "cfg"
    (elsewhere / "mic").mkdir(parents=True)
    (elsewhere / "mic" / "config.toml").write_text("[daemon]\ndrain_timeout = 3\n")
    config = load_config(cwd=layout["cwd"], env=_env(XDG_CONFIG_HOME=str(elsewhere)))
    assert config.drain_timeout == 3.0



def test_vcs_store_default_follows_xdg_data_home(layout):
    config = load_config(cwd=layout["cwd"], env=_env(XDG_DATA_HOME="/data"))
    assert config.store_url == "file:///data/mic/projects" and config.source("store_url") == "default"
    assert config.workspace_root is None  # no .mic/ anywhere: not a VCS checkout


# Each row adds one layer for vcs.store_url; the highest present wins and is named as the source.
VCS_PRECEDENCE = [
    ("user config", {"user"}, "file:///user", "{user}"),
    (".mic/config.toml beats user", {"user", "dotmic"}, "file:///dotmic", "{dotmic}"),
    ("mic.toml beats .mic/config.toml", {"user", "dotmic", "toml"}, "s3://b/p", "{toml}"),
    ("env beats files", {"user", "dotmic", "toml", "env"}, "file:///env", "env MIC_STORE_URL"),
    ("flag beats env", {"user", "dotmic", "toml", "env", "flag"}, "file:///flag", "flag --store"),
]


@pytest.mark.parametrize(
    ("description", "layers", "expected", "source"), VCS_PRECEDENCE, ids=[r[0] for r in VCS_PRECEDENCE]
)
def test_vcs_precedence(layout, description, layers, expected, source):
    dotmic = layout["ws"] / ".mic" / "config.toml"
    dotmic.parent.mkdir()
    if "user" in layers:
        layout["user"].write_text('[vcs]\nstore_url = "file:///user"\ns3_endpoint_url = "http://user:1"\n')
    if "dotmic" in layers:
        dotmic.write_text('[vcs]\nstore_url = "file:///dotmic"\n')
    if "toml" in layers:
        layout["toml"].write_text('[vcs]\nstore_url = "s3://b/p"\n')
    env = _env(MIC_STORE_URL="file:///env") if "env" in layers else _env()
    flags = {"store_url": "file:///flag"} if "flag" in layers else {}
    config = load_config(flags, cwd=layout["cwd"], env=env)
    assert config.store_url == expected
    assert config.source("store_url") == source.format(user=layout["user"], dotmic=dotmic, toml=layout["toml"])
    assert config.vcs_s3_endpoint_url == "http://user:1"  # a lower layer still supplies the keys it alone sets
    assert config.workspace_root == layout["ws"]


def test_one_env_var_sets_both_s3_endpoints(layout):
    config = load_config(cwd=layout["cwd"], env=_env(MIC_S3_ENDPOINT_URL="http://127.0.0.1:9000"))
    assert config.s3_endpoint_url == config.vcs_s3_endpoint_url == "http://127.0.0.1:9000"
    config = load_config({"vcs_s3_endpoint_url": "http://vcs:1"}, cwd=layout["cwd"], env=_env())
    assert (config.s3_endpoint_url, config.vcs_s3_endpoint_url) == (None, "http://vcs:1")
    assert config.source("vcs_s3_endpoint_url") == "flag --s3-endpoint-url"


def test_vcs_and_tool_values_are_typed(layout):
    layout["toml"].write_text(
        "[vcs]\nwatch = false\nwatch_min_files = 5\nwatch_idle_timeout = \"10m\"\n"
        '[tools.bazel]\ninstance_name = "team/main"\n'
    )
    config = load_config(cwd=layout["cwd"], env=_env())
    assert (config.watch, config.watch_min_files, config.watch_idle_timeout) == (False, 5, 600.0)
    assert config.bazel_instance_name == "team/main"
    assert config.source("bazel_instance_name") == str(layout["toml"])
    config = load_config(cwd=layout["cwd"], env=_env(MIC_WATCH="on", MIC_WATCH_MIN_FILES="7"))
    assert (config.watch, config.watch_min_files) == (True, 7)


def test_nearest_marker_of_either_kind_is_the_workspace(layout):
    """One rule for both halves: the nearest directory holding mic.toml or .mic/ (with neither, the cwd)."""
    assert load_config(cwd=layout["cwd"], env=_env()).workspace == layout["cwd"]
    (layout["ws"] / ".mic").mkdir()
    config = load_config(cwd=layout["cwd"], env=_env())
    assert (config.workspace, config.workspace_root) == (layout["ws"], layout["ws"])
    inner = layout["ws"] / "sub"
    (inner / "mic.toml").write_text('[vcs]\nwatch = "off"\n')  # a nearer mic.toml makes a nearer workspace
    config = load_config(cwd=layout["cwd"], env=_env())
    assert (config.workspace, config.workspace_root, config.watch) == (inner, None, False)


def test_effective_lists_every_key_of_both_halves(layout):
    rows = load_config(cwd=layout["cwd"], env=_env()).effective()
    names = [name for name, _, _ in rows]
    assert names == [key.name for key in KEYS] + ["workspace"]
    assert {"vcs.store_url", "vcs.watch", "store.memory_budget", "tools.bazel.instance_name"} <= set(names)

BAD = [
    (
        "bad size in env",
        {},
        {"MIC_MEMORY_BUDGET": "lots"},
        None,
        "store.memory_budget (from env MIC_MEMORY_BUDGET)",
    ),
    (
        "bad duration flag",
        {"idle_timeout": "soon"},
        {},
        None,
        "daemon.idle_timeout (from flag --idle-timeout)",
    ),
    ("bad level in toml", {}, {}, '[daemon]\nlog_level = "loud"\n', "daemon.log_level (from {toml})"),
    ("wrong type in toml", {}, {}, "[s3]\nbucket = 5\n", "s3.bucket (from {toml})"),
    ("unknown key", {}, {}, "[store]\nmemroy_budget = 1\n", "{toml}: unknown key store.memroy_budget"),
    ("invalid toml", {}, {}, "[store\n", "{toml}: not valid TOML"),
    (
        "hard below soft",
        {"disk_hard_cap": "1GiB"},
        {"MIC_DISK_SOFT_CAP": "2GiB"},
        None,
        "store.disk_hard_cap (from flag --disk-hard-cap) = 1073741824 is below store.disk_soft_cap "
        "(from env MIC_DISK_SOFT_CAP)",
    ),
    (
        "endpoint not a url",
        {},
        {"MIC_S3_ENDPOINT_URL": "localhost:9000"},
        None,
        "s3.endpoint_url (from env MIC_S3_ENDPOINT_URL) must be an http",
    ),
    (
        "bad bucket",
        {"s3_bucket": "No_Such"},
        {},
        None,
        "s3.bucket (from flag --s3-bucket) is not a valid bucket",
    ),
    ("bad session", {}, {"MIC_SESSION": "../x"}, None, "daemon.session (from env MIC_SESSION)"),
    ("negative size", {}, {}, "[store]\ndisk_soft_cap = -1\n", "store.disk_soft_cap (from {toml})"),
    ("store url scheme", {}, {}, "[vcs]\nstore_url = 'http://x'\n", "must start with file:// or s3://"),
    ("store url bucket", {"store_url": "s3:///nobucket"}, {}, None, "vcs.store_url (from flag --store)"),
    ("store url relative", {}, {"MIC_STORE_URL": "file://rel/x"}, None, "must be an absolute file:///path"),
    ("store url type", {}, {}, "[vcs]\nstore_url = 3\n", "vcs.store_url (from {toml}): expected a string"),
    ("vcs endpoint", {"vcs_s3_endpoint_url": "ftp://x"}, {}, None, "vcs.s3_endpoint_url (from flag"),
    ("unknown vcs key", {}, {}, "[vcs]\nbogus = 'x'\n", "{toml}: unknown key vcs.bogus"),
    ("watch switch", {}, {"MIC_WATCH": "maybe"}, None, "vcs.watch (from env MIC_WATCH): expected on or off"),
    ("watch count", {}, {}, "[vcs]\nwatch_min_files = -1\n", "vcs.watch_min_files (from {toml})"),
    ("watch idle 0", {}, {"MIC_WATCH_IDLE_TIMEOUT": "0"}, None, "vcs.watch_idle_timeout (from env"),
    ("unknown tool key", {}, {}, "[tools.bazel]\nname = 'x'\n", "unknown key tools.bazel.name"),
    ("unknown tool", {}, {}, "[tools.gradel]\ninstance_name = 'x'\n", "unknown key tools.gradel.instance_name"),
    ("instance name", {}, {"MIC_BAZEL_INSTANCE_NAME": "a b"}, None, "tools.bazel.instance_name (from env"),
    (
        "zero soft cap",
        {"disk_soft_cap": "0"},
        {},
        None,
        "store.disk_soft_cap (from flag --disk-soft-cap) must be > 0",
    ),
]


@pytest.mark.parametrize(("description", "flags", "env", "toml", "message"), BAD, ids=[r[0] for r in BAD])
def test_validation_names_key_and_source(layout, description, flags, env, toml, message):
    if toml is not None:
        layout["toml"].write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(flags, cwd=layout["cwd"], env=_env(**env))
    assert message.format(toml=layout["toml"]) in str(info.value)

