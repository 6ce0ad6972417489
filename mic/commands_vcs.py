"""mic's version-control commands (click). Each parses arguments, calls `mic.vcs`/`mic.landing`, and prints.

Registered on the root group by `mic.cli`; the session subcommands live in `mic.commands_session` and the
read-only history commands in `mic.commands_history`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mic.cliutil import Env, command_options, emit
from mic.errors import BadRequest, WorkspaceError
from mic.workspace import Workspace, WorkspaceState

if TYPE_CHECKING:
    from mic.objects import Project

# Heavy modules (objects, tree, landing, zstd) are imported inside the commands that need them, so that
# `mic status`, which only scans the workspace, starts fast.

__all__ = ["register"]

_KIND_LETTER = {"added": "A", "modified": "M", "deleted": "D"}


async def _create_project(env: Env, name: str) -> Project:
    from mic.errors import PreconditionFailed
    from mic.hlc import Clock
    from mic.objects import Project, validate_project_name

    project = Project(env.store, validate_project_name(name))
    try:
        await project.create(Clock().tick())
    except PreconditionFailed:
        raise WorkspaceError(f"project {name!r} already exists in {env.config.store_url}") from None
    return project


@click.group("project")
def project_group() -> None:
    """Create and list projects in the store."""


@project_group.command("create")
@click.argument("name")
@command_options
async def project_create(env: Env, name: str) -> None:
    """Create an empty project NAME in the store."""
    await _create_project(env, name)
    emit(env, {"project": name, "store": env.config.store_url}, f"created project {name} in {env.config.store_url}")


@project_group.command("list")
@command_options
async def project_list(env: Env) -> None:
    """List the projects in the store."""
    from mic.objects import list_projects

    names = await list_projects(env.store)
    emit(env, {"projects": names}, "\n".join(names) if names else "(no projects)")


def _default_project_name(root: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", root.name.lower()).strip("-._") or "project"
    return name[:64]


@click.command("init")
@click.option("--project", "name", default=None, help="Project name (default: this directory's name).")
@command_options
async def init(env: Env, name: str | None) -> None:
    """Create a project and make the current directory its workspace (existing files become changes)."""
    from mic.tree import EMPTY_ROOT

    root = Path.cwd()
    name = name or _default_project_name(root)
    if env.config.workspace_root is not None:
        raise WorkspaceError(f"{env.config.workspace_root} is already a mic workspace")
    await _create_project(env, name)
    Workspace.create(
        root, WorkspaceState(name, 0, EMPTY_ROOT.hex()), store_url=env.config.store_url,
        s3_endpoint_url=env.config.s3_endpoint_url,
    )
    emit(env, {"project": name, "workspace": str(root), "store": env.config.store_url},
         f"created project {name} with its workspace in {root}\nnext: mic land \"why these files\"")


@click.command("checkout")
@click.argument("project_name", metavar="PROJECT")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--at", "at", default=None, help="Position to check out (@N; default: the tip).")
@command_options
async def checkout_cmd(env: Env, project_name: str, directory: Path | None, at: str | None) -> None:
    """Check PROJECT out into DIRECTORY (default: ./PROJECT)."""
    from mic.objects import Project, validate_project_name
    from mic.vcs import checkout, resolve_position

    project = project_name
    root = (directory or Path(validate_project_name(project))).resolve()
    skipped: list[str] = []
    ws = await checkout(
        Project(env.store, project), root, store_url=env.config.store_url,
        s3_endpoint_url=env.config.s3_endpoint_url, position=resolve_position(at), skipped=skipped,
    )
    files = len(ws.index.entries)
    emit(env, {"project": project, "workspace": str(root), "position": ws.state.base, "files": files,
               "skipped": skipped},
         f"checked out {project} @{ws.state.base} ({files} files) into {root}")
    _warn_skipped(env, skipped)


def _warn_skipped(env: Env, skipped: list[str] | tuple[str, ...]) -> None:
    """Warn (stderr) about paths in history that mic no longer tracks and did not write (see `mic.vcs.sync_to`)."""
    if skipped:
        shown = ", ".join(skipped[:20]) + (" …" if len(skipped) > 20 else "")
        click.echo(f"warning: {len(skipped)} path(s) in the project's history have a .git component (or are "
                   f"otherwise not trackable) and were not written: {shown}", err=True)


def _restore_index(env: Env, ws: Workspace) -> None:
    """Rebuild a lost or damaged index from the base tree (needs the store; rare, so asyncio is loaded only here)."""
    import asyncio

    from mic.vcs import restore_index_base

    async def run() -> None:
        try:
            await restore_index_base(env.project(ws.state.project), ws)
        finally:
            await env.close()

    asyncio.run(run())


@click.command("status")
@command_options
def status_cmd(env: Env) -> None:
    """Show the workspace's changes against its base, and its active session."""
    from mic.watch.client import WatchSettings, scan_workspace

    ws = env.workspace()
    settings = WatchSettings.from_config(env.config)
    with ws.locked():  # a land meanwhile is waited for: its new base and index, not a half-written mix
        for _ in range(2):  # a second round when the scan itself found the stored entries damaged
            if ws.index.lost and ws.state.base > 0:  # position 0 is the empty tree: nothing to restore
                _restore_index(env, ws)
            result = scan_workspace(ws.root, ws.index, settings)
            if not ws.index.lost:
                break
        if result.rehashed or ws.index.unsaved:
            ws.index.save()
    changes = [{"path": p, "kind": c[0]} for p, c in sorted(result.changes.items())]
    data = {"project": ws.state.project, "base": ws.state.base, "session": ws.state.session, "changes": changes}

    def human() -> None:
        click.echo(f"project {ws.state.project} @{ws.state.base}"
                   + (f", session {ws.state.session}" if ws.state.session else ", no active session"))
        for c in changes:
            click.echo(f"{_KIND_LETTER[c['kind']]} {c['path']}")
        if not changes:
            click.echo("no changes")

    emit(env, data, human)


@click.command("land")
@click.argument("goal", required=False)
@command_options
async def land_cmd(env: Env, goal: str | None) -> None:
    """Land every workspace change as the active session (or a new one whose goal is GOAL).

    A conflict with sessions landed since this workspace's base prints the paths and sessions and changes nothing.
    """
    from mic.vcs import land_workspace
    from mic.watch.client import WatchSettings

    if goal is not None and not goal.strip():
        raise BadRequest("the goal must not be empty")
    ws = env.workspace()
    project = env.project()
    out = await land_workspace(
        project, ws, goal, kill_at=env.config.debug_kill_at, watch=WatchSettings.from_config(env.config)
    )
    rec = out.result.landing
    data = {
        "position": rec.position, "session": rec.session, "goal": rec.goal, "paths": list(rec.paths),
        "objects_written": out.result.objects_written, "attempts": out.result.attempts,
        "synced_from_others": out.synced, "recovered": out.result.recovered, "kept_local_edits": list(out.kept),
        "skipped": list(out.skipped),
    }
    emit(env, data, f"landed session {rec.session} at @{rec.position}: {len(rec.paths)} path(s), "
                    f"{out.result.objects_written} object(s) written"
                    + (f", {out.synced} path(s) updated from other sessions" if out.synced else ""))
    if not env.as_json:
        _warn_skipped(env, out.skipped)
    if out.kept and not env.as_json:
        click.echo(
            f"warning: {len(out.kept)} file(s) that landed (from other sessions, or from this session's interrupted "
            f"land) differ here and were NOT updated (your version is kept): {', '.join(out.kept)}\n"
            f"  they now show as modified against @{rec.position}; see the landed version with `mic cat <path>` "
            "and merge it by hand before landing them, or landing them undoes the other session's change",
            err=True,
        )


def register(group: click.Group) -> None:
    """Attach the workspace commands to the root `mic` group (session, history and import commands live in
    their own modules, so `mic status` does not load them)."""
    for command in (project_group, init, checkout_cmd, status_cmd, land_cmd):
        group.add_command(command)
