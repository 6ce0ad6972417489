"""The `mic` command line: the root group only. Commands live in `mic.commands_*` modules.

The root group loads a command module only when one of its commands runs (click's lazy-group pattern):
`mic status` and `mic land` never import the daemon client, which keeps every VCS command's start-up short.
It also hands click's usage errors to `mic.cliutil.fail` when `--json` was given, so that every error under
`--json` is a JSON object.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["COMMAND_MODULES", "main"]

# Command name -> the module whose `register(group)` adds it. tests/mic/test_cli_lazy.py checks this table
# against what the modules really register.
COMMAND_MODULES = {
    **dict.fromkeys(("config", "daemon", "stats"), "mic.commands_daemon"),
    **dict.fromkeys(("checkout", "init", "land", "project", "resolve", "status"), "mic.commands_vcs"),
    **dict.fromkeys(("cat", "diff", "log", "ls", "show"), "mic.commands_history"),
    "import": "mic.commands_import",
    "session": "mic.commands_session",
}


class _LazyGroup(click.Group):
    """A group that imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name]).register(self)
        return self.commands.get(cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        options = args[: args.index("--")] if "--" in args else args
        ctx.meta["mic.json"] = "--json" in options
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # an unknown command or a subcommand's bad arguments
            if not ctx.meta.get("mic.json"):
                raise
            from mic.cliutil import fail

            fail(True, exc)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mic")
def main() -> None:
    """mic: agent-first version control and a per-session build-cache daemon."""
