"""Configuration precedence: flags > MIC_* env > workspace mic.toml > .mic/config.toml > user config > defaults."""

from __future__ import annotations

import pytest

from mic.config import load_config
from mic.errors import ConfigError


def test_defaults_use_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(cwd=tmp_path)
    assert config.store_url == f"file://{tmp_path / 'data'}/mic/projects"
    assert config.sources["store_url"] == "default" and config.workspace_root is None


def test_precedence(tmp_path, monkeypatch, clean_env):
    user = clean_env / ".config" / "mic"
    user.mkdir(parents=True)
    (user / "config.toml").write_text('[vcs]\nstore_url = "file:///user"\ns3_endpoint_url = "http://user:1"\n')
    ws = tmp_path / "ws"
    (ws / ".mic").mkdir(parents=True)
    (ws / ".mic" / "config.toml").write_text('[vcs]\nstore_url = "file:///dotmic"\n')
    sub = ws / "deep" / "er"
    sub.mkdir(parents=True)
    config = load_config(cwd=sub)
    assert config.workspace_root == ws.resolve()
    assert (config.store_url, config.s3_endpoint_url) == ("file:///dotmic", "http://user:1")
    assert config.sources["s3_endpoint_url"].endswith("config.toml")
    (ws / "mic.toml").write_text('[vcs]\nstore_url = "s3://b/p"\n')
    assert load_config(cwd=sub).store_url == "s3://b/p"
    monkeypatch.setenv("MIC_STORE_URL", "file:///env")
    assert load_config(cwd=sub).store_url == "file:///env"
    config = load_config({"store_url": "file:///flag"}, cwd=sub)
    assert config.store_url == "file:///flag" and config.sources["store_url"] == "flag"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[vcs]\nstore_url = 3\n", "must be a string"),
        ("[vcs]\nbogus = 'x'\n", "unknown key"),
        ("[vcs\n", "not valid TOML"),
        ("[vcs]\nstore_url = 'http://x'\n", "must start with file:// or s3://"),
        ("[vcs]\nstore_url = 's3:///nobucket'\n", "names no bucket"),
        ("[vcs]\nstore_url = 'file://relative/x'\n", "absolute"),
        ("[vcs]\nstore_url = 'file:///x'\ns3_endpoint_url = 'ftp://x'\n", "http:// or https://"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path, toml, message):
    (tmp_path / ".mic").mkdir()
    (tmp_path / "mic.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(cwd=tmp_path)
