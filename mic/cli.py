"""The `mic` command line: the root group only. Commands live in `mic.commands_*` modules."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mic")
def main() -> None:
    """mic: agent-first version control and a per-session build-cache daemon."""


def _register() -> None:
    import importlib

    for module_name in ("mic.commands_daemon", "mic.commands_vcs"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(main)


_register()
