"""Shared plumbing for mic's commands: common options, config → store → project, output, and the error path.

VCS commands get `--json` (machine output on stdout), `--store` and `--s3-endpoint-url` from `command_options`.
Every command's errors, the daemon commands' and click's usage errors included, are reported by `fail`:
without `--json` as one line `mic: error: …` on stderr, with `--json` as one JSON object on stdout,
`{"error": message, "kind": error class}` (a conflict adds `paths` and `sessions`). Exit codes (`_exit_code`):
1 the operation failed, 2 usage or configuration error, 3 conflict, 4 not found or store unavailable.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mic.errors import Conflict, StoreUnavailable
from mic.workspace import Workspace
from micd.config import Config, load_config
from mickernel.errors import BadRequest, ConfigError, MicError, NotFound

if TYPE_CHECKING:
    from mic.objects import Project
    from mic.objectstore import ObjectStore

__all__ = ["Env", "command_options", "emit", "fail"]

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect (start-up time matters for `mic status`)


@dataclass
class Env:
    """What a command runs with: its config, whether to print JSON, and lazily opened store/workspace."""

    config: Config
    as_json: bool
    project_name: str | None = None
    _store: ObjectStore | None = None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            from mic.objectstore import open_store

            self._store = open_store(self.config.store_url, s3_endpoint_url=self.config.vcs_s3_endpoint_url)
        return self._store

    def workspace(self) -> Workspace:
        return Workspace.open(self.config.workspace_root)

    def project(self, name: str | None = None) -> Project:
        """The project named on the command line, else the workspace's."""
        from mic.objects import Project

        name = name or self.project_name
        if name is None:
            name = self.workspace().state.project
        return Project(self.store, name)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def _exit_code(exc: MicError | click.UsageError) -> int:
    if isinstance(exc, Conflict):
        return 3
    if isinstance(exc, NotFound | StoreUnavailable):
        return 4
    if isinstance(exc, BadRequest | ConfigError | click.UsageError):
        return 2
    return 1


def fail(as_json: bool, exc: MicError | click.UsageError) -> NoReturn:
    """Report `exc` (one line on stderr, or with --json one JSON object on stdout) and exit with its code."""
    message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
    if as_json:
        kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__  # not click's subclasses
        payload: dict[str, Any] = {"error": message, "kind": kind}
        if isinstance(exc, Conflict):
            payload.update(paths=list(exc.paths), sessions=list(exc.sessions))
        click.echo(json.dumps(payload))
    else:
        click.echo(f"mic: error: {message}", err=True)
    sys.exit(_exit_code(exc))


def emit(env: Env, data: Any, human: Callable[[], None] | str | None = None) -> None:
    """Print `data` as JSON under --json, otherwise the human rendering."""
    if env.as_json:
        click.echo(json.dumps(data, indent=None, sort_keys=True))
    elif callable(human):
        human()
    elif human is not None:
        click.echo(human)


def command_options(fn: Callable[..., Coroutine[Any, Any, None] | None]) -> Callable[..., None]:
    """Add --json/--store/--s3-endpoint-url/--project, build the Env, run the async body, map errors."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @click.option("--store", "store_url", default=None, help="Store URL (file:///dir or s3://bucket/prefix).")
    @click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint URL.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, store_url: str | None, s3_endpoint_url: str | None, **kwargs: Any) -> None:
        try:
            config = load_config({"store_url": store_url, "vcs_s3_endpoint_url": s3_endpoint_url}, cwd=Path.cwd())
        except MicError as exc:
            fail(as_json, exc)
        env = Env(config, as_json, kwargs.pop("project", None))
        if not fn.__code__.co_flags & _CO_COROUTINE:  # store-free commands skip the event loop entirely
            try:
                fn(env, *args, **kwargs)
            except MicError as exc:
                fail(as_json, exc)
            return

        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        async def body() -> None:
            # store I/O is fsync-bound, not CPU-bound: more threads than cores keeps the disk queue full
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))
            try:
                await fn(env, *args, **kwargs)  # type: ignore[misc]
            finally:
                await env.close()

        try:
            asyncio.run(body())
        except MicError as exc:
            fail(as_json, exc)

    return wrapper


project_option = click.option("--project", default=None, help="Project name (default: the workspace's).")
