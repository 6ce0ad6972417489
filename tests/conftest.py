"""Base fixtures: every test runs with a clean environment (no HOME, XDG_*, MIC_*, AWS_* leaking in); and the
`slow` marker for the modules `make test-fast` leaves out."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.tools"]

_CLEARED_PREFIXES = ("XDG_", "MIC_", "AWS_")
SLOW_MODULES = frozenset(
    {
        # Seconds each in a full run (pytest --durations=0, 2026-12-08): real clients (tests/clients, marked
        # there), the moto S3 server, daemons and landers in subprocesses, crash and concurrency scenarios,
        # the tool-cache protocol suites, and the disk tier's and CLI's suites of a few seconds each. The rest,
        # the fast lane, runs in under a minute.
        "conformance/test_cas_kv.py",
        "conformance/test_object_store.py",
        "mic/test_cli.py",
        "mic/test_commands_daemon.py",
        "mic/test_concurrency.py",
        "mic/test_crash.py",
        "mic/test_landing.py",
        "mic/test_large_files.py",
        "mic/test_temp_files.py",
        "mic/test_unmerged.py",
        "mic/test_watch.py",
        "mic/test_workspace_state.py",
        "micd/test_disk_bitrot.py",
        "micd/test_disk_cancel.py",
        "micd/test_disk_caps.py",
        "micd/test_disk_fastpath.py",
        "micd/test_disk_index.py",
        "micd/test_disk_integrity.py",
        "micd/test_disk_journal.py",
        "micd/test_disk_model.py",
        "micd/test_disk_shared.py",
        "micd/test_disk_shared_cap.py",
        "micd/test_lifecycle.py",
        "micd/test_s3_tier.py",
        "micd/test_tiered.py",
        "protocols/test_bazel_batch_budget.py",
        "protocols/test_bazel_reapi_ac.py",
        "protocols/test_bazel_reapi_cas.py",
        "protocols/test_ccache.py",
        "protocols/test_gradle.py",
        "protocols/test_large_action_result.py",
        "protocols/test_nx.py",
        "protocols/test_sccache.py",
        "protocols/test_turbo.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of SLOW_MODULES `slow` (tests/clients mark themselves)."""
    tests_dir = os.path.dirname(__file__)
    for item in items:
        if os.path.relpath(str(item.path), tests_dir) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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
