"""Base fixtures: every test runs with a clean environment (no HOME, XDG_*, MIC_*, AWS_* leaking in)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.tools"]

_CLEARED_PREFIXES = ("XDG_", "MIC_", "AWS_")


@pytest.fixture(autouse=True)
def clean_env(tmp_path_factory, monkeypatch):
    """Point HOME and XDG dirs at a private temp dir and drop MIC_*/AWS_* variables."""
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local/state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home
