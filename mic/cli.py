"""The `mic` command line: the root group only. Commands live in `mic.commands_*` modules."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mic")
def main() -> None:
    """mic: agent-first version control and a per-session build-cache daemon."""


def _register() -> None:
    from mic import commands_daemon, commands_vcs

    commands_daemon.register(main)
    commands_vcs.register(main)


_register()
