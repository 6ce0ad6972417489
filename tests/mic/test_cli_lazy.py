"""The lazy root group: its name table matches what the command modules register, and loads lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from mic.cli import COMMAND_MODULES, main


def test_table_matches_what_each_module_registers():
    for module_name in set(COMMAND_MODULES.values()):
        group = click.Group()
        importlib.import_module(module_name).register(group)
        expected = {name for name, mod in COMMAND_MODULES.items() if mod == module_name}
        assert set(group.commands) == expected, module_name


def test_every_command_resolves_and_help_lists_them_all():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMAND_MODULES:
        assert main.get_command(click.Context(main), name) is not None
        assert f"  {name}" in result.output
    assert main.get_command(click.Context(main), "no-such-command") is None


def test_status_path_does_not_import_the_daemon_client():
    code = (
        "import sys; from mic.cli import main; import click; "
        "main.get_command(click.Context(main), 'status'); "
        "print('micd.client' in sys.modules, 'aiohttp' in sys.modules, 'asyncio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # status needs neither the daemon nor an event loop
