"""Shared plumbing for mic's VCS commands: common options, config → store → project, output, error mapping.

Every command gets `--json` (machine output on stdout), `--store` and `--s3-endpoint-url`. Errors are mapped to
exit codes in exactly one place (`_exit_code`): 1 generic, 2 bad input, 3 conflict, 4 not found / unavailable.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mic.errors import BadRequest, ConfigError, Conflict, MicError, NotFound, StoreUnavailable
from mic.workspace import Workspace
from micd.config import Config, load_config

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


def _exit_code(exc: MicError) -> int:
    if isinstance(exc, Conflict):
        return 3
    if isinstance(exc, NotFound | StoreUnavailable):
        return 4
    if isinstance(exc, BadRequest | ConfigError):
        return 2
    return 1


def fail(env_json: bool, exc: MicError) -> None:
    """Report `exc` (stderr, or a JSON object on stdout with --json) and exit with its code."""
    if env_json:
        payload: dict[str, Any] = {"error": str(exc), "kind": type(exc).__name__}
        if isinstance(exc, Conflict):
            payload.update(paths=list(exc.paths), sessions=list(exc.sessions))
        click.echo(json.dumps(payload))
    else:
        click.echo(f"mic: error: {exc}", err=True)
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
            return
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
