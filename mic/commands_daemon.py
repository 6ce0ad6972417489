"""`mic daemon run|start|stop|status`, `mic stats` and `mic config show`: the daemon as seen from the CLI.

Arguments only; the work is in `micd.client` (the one way `mic` reaches the daemon) and `micd.config` (the
configuration both halves share). Every command has `--json`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

import micd.client as client
from mic.cliutil import fail
from micd.config import DAEMON_KEYS, load_config
from mickernel.errors import MicError

__all__ = ["format_bytes", "register", "stats_rows"]


def _options(json_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add `--json` and one option per daemon key; send every MicError through mic's one error path."""

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def reported(*args: Any, as_json: bool, **params: Any) -> None:
            try:
                fn(*args, as_json=as_json, **params)
            except MicError as exc:
                fail(as_json, exc)

        command: Callable[..., None] = reported
        for key in reversed(DAEMON_KEYS):
            help_text = f"{key.help} [{key.name}, env {key.env}]"
            command = click.option(key.flag, key.attr, default=None, metavar="VALUE", help=help_text)(command)
        return click.option("--json", "as_json", is_flag=True, help=json_help)(command)

    return decorate


def _flags(params: dict[str, Any]) -> dict[str, Any]:
    attrs = {key.attr for key in DAEMON_KEYS}
    return {name: value for name, value in params.items() if name in attrs and value is not None}


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. 3.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _describe(info: client.DaemonInfo) -> str:
    return (
        f"micd running, pid {info.pid}, up {info.uptime:.0f}s\n  http  {info.http}\n  grpc  {info.grpc}\n"
        f"  token {info.as_dict()['token_file']}\n  state {info.state_dir}"
    )


def stats_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (tool, tier): hits, misses, bytes served by hits, bytes put, hit ratio; from /stats series."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, series in stats.get("metrics", {}).get("series", {}).items():
        tool, tier, event = name.split("/", 2)
        row = rows.setdefault(
            (tool, tier),
            {
                "tool": tool,
                "tier": tier,
                "hits": 0,
                "misses": 0,
                "hit_bytes": 0,
                "put_bytes": 0,
                "puts": 0,
                "errors": 0,
            },
        )
        if event == "hit":
            row["hits"] += series["count"]
            row["hit_bytes"] += series["bytes"]
        elif event == "miss":
            row["misses"] += series["count"]
        elif event == "put":
            row["puts"] += series["count"]
            row["put_bytes"] += series["bytes"]
        elif event == "error":
            row["errors"] += series["count"]
    for row in rows.values():
        looked = row["hits"] + row["misses"]
        row["hit_ratio"] = round(row["hits"] / looked, 4) if looked else None
    return [rows[k] for k in sorted(rows)]


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _stats_table(stats: dict[str, Any]) -> str:
    header = ("tool", "tier", "hits", "misses", "hit ratio", "hit bytes", "puts", "put bytes", "errors")
    table = [header]
    for row in stats_rows(stats):
        ratio = "-" if row["hit_ratio"] is None else f"{row['hit_ratio']:.1%}"
        table.append(
            (
                row["tool"],
                row["tier"],
                str(row["hits"]),
                str(row["misses"]),
                ratio,
                format_bytes(row["hit_bytes"]),
                str(row["puts"]),
                format_bytes(row["put_bytes"]),
                str(row["errors"]),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    if len(table) == 1:
        lines.append("(no requests yet)")
    lines += ["", f"uptime {stats.get('uptime_seconds', 0):.0f}s, pid {stats.get('pid')}", "store:"]
    for key, value in _flatten(stats.get("store", {})):
        shown = (
            format_bytes(value)
            if isinstance(value, int) and key.endswith(("bytes", "used", "size", "budget", "_cap"))
            else value
        )
        lines.append(f"  {key:<32} {shown}")
    return "\n".join(lines)


def register(group: click.Group) -> None:
    """Add `daemon`, `stats` and `config show` to the root `mic` group."""

    @group.group()
    def daemon() -> None:
        """Run, start, stop and inspect this session's micd."""

    @daemon.command("run")
    @_options("Print the endpoints as JSON.")
    def run(as_json: bool, **params: Any) -> None:
        """Run the daemon in the foreground (prints its endpoints; Ctrl-C stops it)."""
        load_config(_flags(params))  # report configuration errors before replacing this process
        client.run_foreground(_flags(params), as_json=as_json)

    @daemon.command("start")
    @click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the daemon.")
    @_options("Print the endpoints as JSON.")
    def start(as_json: bool, timeout: float, **params: Any) -> None:
        """Start the daemon in the background unless one already serves this session."""
        config = load_config(_flags(params))
        info, started = client.start_daemon(config, _flags(params), timeout=timeout)
        head = "started" if started else "already running"
        _emit({**info.as_dict(), "started": started}, as_json, f"{head}: {_describe(info)}")

    @daemon.command("stop")
    @click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for draining and exit.")
    @_options("Print the result as JSON.")
    def stop(as_json: bool, timeout: float, **params: Any) -> None:
        """Stop the daemon (SIGTERM: it drains the S3 upload queue first) and wait for it to exit."""
        config = load_config(_flags(params))
        pid = client.stop_daemon(config, timeout=timeout)
        text = f"stopped micd pid {pid}" if pid else f"no daemon was running for {config.state_dir}"
        _emit({"stopped": pid is not None, "pid": pid}, as_json, text)

    @daemon.command("status")
    @_options("Print the status as JSON.")
    def status(as_json: bool, **params: Any) -> None:
        """Print pid, endpoints and uptime; exit status 1 if no daemon is running."""
        config = load_config(_flags(params))
        info = client.find_running(config)
        if info is None:
            _emit(
                {"running": False, "state_dir": str(config.state_dir)},
                as_json,
                f"micd not running (state dir {config.state_dir})",
            )
            sys.exit(1)
        _emit({"running": True, **info.as_dict()}, as_json, _describe(info))

    @group.command("stats")
    @_options("Print the raw statistics as JSON.")
    def stats(as_json: bool, **params: Any) -> None:
        """Hits, misses, bytes and hit ratio per tool and tier; tier sizes, upload queue and S3 state."""
        data = client.fetch_json(load_config(_flags(params)), "/stats")
        if as_json:
            data["rows"] = stats_rows(data)
        _emit(data, as_json, _stats_table(data))

    def config() -> None:
        """Inspect the effective configuration."""

    found = group.commands.get("config")  # kept if this group already has one
    config_group = found if isinstance(found, click.Group) else group.group("config")(config)

    @config_group.command("show")
    @_options("Print {key: {value, source}} as JSON.")
    def show(as_json: bool, **params: Any) -> None:
        """Print every effective setting (daemon and VCS) and where its value came from."""
        rows = load_config(_flags(params)).effective()
        data = {name: {"value": value, "source": source} for name, value, source in rows}
        width = max(len(name) for name, _, _ in rows)
        text = "\n".join(f"{name:<{width}}  {_show(value):<40}  ({source})" for name, value, source in rows)
        _emit(data, as_json, text)


def _show(value: object) -> str:
    return "(unset)" if value is None else str(value)
