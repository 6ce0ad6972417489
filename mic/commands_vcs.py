"""mic's version-control commands (click). Each parses arguments, calls `mic.vcs`/`mic.landing`, and prints.

Registered on the root group by `mic.cli`; the session subcommands live in `mic.commands_session` and the
read-only history commands in `mic.commands_history`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mic.cliutil import Env, command_options, emit
from mic.errors import WorkspaceError
from mic.workspace import Workspace, WorkspaceState
from mickernel.errors import BadRequest

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
        s3_endpoint_url=env.config.vcs_s3_endpoint_url,
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
        s3_endpoint_url=env.config.vcs_s3_endpoint_url, position=resolve_position(at), skipped=skipped,
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
        if ws.clear_merged(result.changes):  # the user took their version: nothing left to merge
            ws.save_state()
    changes = [{"path": p, "kind": c[0]} for p, c in sorted(result.changes.items())]
    unmerged = [{"path": p, "session": s or None} for p, s in sorted(ws.state.unmerged.items())]
    data = {"project": ws.state.project, "base": ws.state.base, "session": ws.state.session, "changes": changes,
            "unmerged": unmerged}

    def human() -> None:
        click.echo(f"project {ws.state.project} @{ws.state.base}"
                   + (f", session {ws.state.session}" if ws.state.session else ", no active session"))
        for c in changes:
            click.echo(f"{_KIND_LETTER[c['kind']]} {c['path']}")
        if not changes:
            click.echo("no changes")
        if unmerged:
            click.echo(f"unmerged ({len(unmerged)}): another session changed these while you had local edits; "
                       "`mic land` refuses until each is merged")
            for u in unmerged:
                click.echo(f"U {u['path']}" + (f"  (changed by session {u['session']})" if u["session"] else ""))
            click.echo(f"  merge the landed version (`mic cat <path>`, @{ws.state.base}) into yours, then "
                       "`mic resolve <path>`; or make the file equal to it (take theirs)")

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
        "skipped": list(out.skipped), "unmerged": list(out.unmerged),
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
    if out.unmerged and not env.as_json:
        click.echo(
            f"warning: {len(out.unmerged)} path(s) are now unmerged (another session changed them too): "
            f"{', '.join(out.unmerged)}\n  `mic land` refuses until you merge them and run `mic resolve <path>` "
            "(see `mic status`)",
            err=True,
        )


def _workspace_rel(ws: Workspace, path: str) -> str:
    """PATH as given on the command line (relative to the current directory) as a workspace-relative path."""
    full = os.path.normpath(os.path.join(os.getcwd(), path))
    rel = os.path.relpath(full, ws.root)
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise BadRequest(f"{path} is not a file inside the workspace {ws.root}")
    return rel


@click.command("resolve")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@command_options
def resolve_cmd(env: Env, paths: tuple[str, ...]) -> None:
    """Mark unmerged PATHs as merged, so that `mic land` lands them as they are now.

    A path is unmerged when a `mic land` kept your local edit of a file that another session had changed too (its
    landed version is now the file's base: `mic cat PATH`); landing your version unchanged would undo that change,
    so `mic land` refuses while any path is unmerged (`mic status` lists them). Merge the landed version into
    yours by hand, then run `mic resolve PATH`. Taking theirs (making the file equal to the landed version) needs
    no resolve: `mic status` and `mic land` clear it. Deleting the file counts only once resolved: deletion wins
    only explicitly. A PATH that is not unmerged is an error, and then nothing is marked.
    """
    ws = env.workspace()
    with ws.locked():
        rels = list(dict.fromkeys(_workspace_rel(ws, p) for p in paths))
        unknown = [r for r in rels if r not in ws.state.unmerged]
        if unknown:
            listed = ", ".join(sorted(ws.state.unmerged)) or "none"
            raise BadRequest(f"not unmerged: {', '.join(unknown)} (unmerged paths: {listed}); nothing was marked")
        for r in rels:
            del ws.state.unmerged[r]
        ws.save_state()
        left = sorted(ws.state.unmerged)
    emit(env, {"resolved": rels, "unmerged": left},
         f"resolved {', '.join(rels)}" + (f"; still unmerged: {', '.join(left)}" if left else ""))


def register(group: click.Group) -> None:
    """Attach the workspace commands to the root `mic` group (session, history and import commands live in
    their own modules, so `mic status` does not load them)."""
    for command in (project_group, init, checkout_cmd, status_cmd, land_cmd, resolve_cmd):
        group.add_command(command)
