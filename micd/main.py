"""`micd`: the daemon process's command line (arguments only; the work is in micd.lifecycle).

    micd run [--json] [--memory-budget 512MiB] [--idle-timeout 10m] …   # foreground, prints its endpoints

`mic daemon start` runs `python -m micd.main run --detached …` in a new session with output to daemon.log.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from micd.config import DAEMON_KEYS, load_config
from micd.lifecycle import AlreadyRunning, run_daemon
from mickernel.errors import ConfigError

__all__ = ["config_options", "main"]

EXIT_ALREADY_RUNNING = 3  # mirrored in micd.client: the starter waits for the daemon that won


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one `--<key>` option per configuration key (the highest-precedence layer)."""
    for key in reversed(DAEMON_KEYS):
        command = click.option(
            key.flag, key.attr, default=None, metavar="VALUE", help=f"{key.help} [{key.name}, env {key.env}]"
        )(command)
    return command


def flags_from(params: dict[str, Any]) -> dict[str, Any]:
    """Return the configuration flags the user actually gave."""
    attrs = {key.attr for key in DAEMON_KEYS}
    return {name: value for name, value in params.items() if name in attrs and value is not None}


def print_endpoints(info: dict[str, Any], *, as_json: bool, token_file: str) -> None:
    if as_json:
        click.echo(json.dumps({**info, "token_file": token_file}))
    else:
        click.echo(f"micd pid {info['pid']} (session {info['session']})")
        click.echo(f"  http  {info['http']}")
        click.echo(f"  grpc  {info['grpc']}")
        click.echo(f"  token {token_file}  (send as 'Authorization: Bearer <token>')")
        click.echo(f"  state {info['state_dir']}")
    sys.stdout.flush()


def run_foreground(flags: dict[str, Any], *, as_json: bool, detached: bool) -> int:
    """Load config and run the daemon in this process; returns the exit code."""
    try:
        config = load_config(flags)
    except ConfigError as exc:
        click.echo(f"micd: configuration error: {exc}", err=True)
        return 2

    def on_ready(info: dict[str, Any]) -> None:
        if not detached:
            print_endpoints(info, as_json=as_json, token_file=str(config.state_dir / "token"))

    try:
        return run_daemon(config, echo=not detached, on_ready=on_ready)
    except AlreadyRunning as exc:
        click.echo(f"micd: {exc}", err=True)
        return EXIT_ALREADY_RUNNING


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """micd: the per-session build-cache daemon."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON line.")
@click.option(
    "--detached", is_flag=True, hidden=True, help="Started by `mic daemon start`: log to file only."
)
@config_options
def run(as_json: bool, detached: bool, **params: Any) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT or the idle timeout."""
    sys.exit(run_foreground(flags_from(params), as_json=as_json, detached=detached))


if __name__ == "__main__":
    main()
