"""Read-only history commands: `mic log`, `show`, `cat`, `ls`, `diff`."""

from __future__ import annotations

import asyncio
import difflib
import sys
from typing import TYPE_CHECKING

import click

from mic.cliutil import Env, command_options, emit, project_option
from mic.commands_session import print_session, session_json
from mic.hlc import format_hlc
from mickernel.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from mic.objects import Project

# The store-side modules (landing, tree, objects → zstd) are imported inside the commands, keeping the CLI's
# start-up cheap for commands that never touch them.

__all__ = ["cat_cmd", "diff_cmd", "log_cmd", "ls_cmd", "show_cmd"]


@click.command("log")
@click.option("-n", "limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many landings.")
@project_option
@command_options
async def log_cmd(env: Env, limit: int) -> None:
    """Show the newest landings first: position, session, time, goal."""
    from mic.landing import roll_forward

    project = env.project()
    tip, _ = await roll_forward(project)
    positions = range(tip.position, max(0, tip.position - limit), -1)
    records = await asyncio.gather(*(project.landing(p) for p in positions))
    rows = [{"position": r.position, "session": r.session, "goal": r.goal, "hlc": r.hlc, "time": format_hlc(r.hlc),
             "paths": len(r.paths)} for r in records if r is not None]

    def human() -> None:
        for row in rows:
            goal = str(row["goal"])
            first = goal.splitlines()[0] if goal else ""
            click.echo(f"@{row['position']:<6} {row['session']}  {row['time']}  {row['paths']:>5} path(s)  {first}")
        if not rows:
            click.echo("(nothing landed yet)")

    emit(env, {"project": project.name, "tip": tip.position, "landings": rows}, human)


@click.command("show")
@click.argument("session")
@project_option
@command_options
async def show_cmd(env: Env, session: str) -> None:
    """Show a session (id, id prefix, or @N for the session landed at N): goal, conversation, decisions, changes."""
    from mic.session import find_session
    from mic.vcs import resolve_position

    project = env.project()
    if session.startswith("@"):
        rec = await project.landing(resolve_position(session) or 0)
        if rec is None:
            raise NotFound(f"nothing has landed at {session}")
        session = rec.session
    found = await find_session(project, session)
    emit(env, session_json(found), lambda: print_session(found))


def _split_path_pos(path: str | None, pos: str | None) -> tuple[str, int | None]:
    from mic.vcs import resolve_position

    if path is not None and path.startswith("@") and pos is None:
        path, pos = None, path
    return (path or "").strip("/"), resolve_position(pos)


async def _default_position(env: Env, position: int | None) -> int | None:
    if position is None and env.project_name is None and env.config.workspace_root is not None:
        return env.workspace().state.base
    return position


@click.command("cat")
@click.argument("path")
@click.argument("position", required=False)
@project_option
@command_options
async def cat_cmd(env: Env, path: str, position: str | None) -> None:
    """Print the content of PATH at POSITION (@N; default: the workspace base, or the tip outside one)."""
    from mic.tree import Tree
    from mic.vcs import tree_at

    rel, pos = _split_path_pos(path, position)
    project = env.project()
    pos, root = await tree_at(project, await _default_position(env, pos))
    entry = await Tree(project).lookup(root, rel)
    if entry is None:
        raise NotFound(f"{rel} does not exist at @{pos}")
    data = await project.read_content(entry.hash)
    if env.as_json:
        try:
            text: str | None = data.decode()
        except UnicodeDecodeError:
            text = None
        emit(env, {"path": rel, "position": pos, "size": entry.size, "hash": entry.hash.hex(), "text": text})
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@click.command("ls")
@click.argument("path", required=False)
@click.argument("position", required=False)
@click.option("-r", "--recursive", is_flag=True, help="List every file below PATH.")
@project_option
@command_options
async def ls_cmd(env: Env, path: str | None, position: str | None, recursive: bool) -> None:
    """List the files and directories under PATH at POSITION (@N)."""
    from mic.tree import Tree
    from mic.vcs import tree_at

    rel, pos = _split_path_pos(path, position)
    project = env.project()
    pos, root = await tree_at(project, await _default_position(env, pos))
    prefix = f"{rel}/" if rel else ""
    rows: dict[str, dict[str, object]] = {}
    async for key, entry in Tree(project).items(root, prefix):
        rest = key[len(prefix):]
        if not recursive and "/" in rest:
            name = prefix + rest.split("/", 1)[0] + "/"
            rows.setdefault(name, {"path": name, "type": "dir"})
        else:
            rows[key] = {"path": key, "type": ("file", "exec", "symlink")[entry.mode], "size": entry.size}
    if rel and not rows:
        exact = await Tree(project).lookup(root, rel)
        if exact is None:
            raise NotFound(f"{rel} does not exist at @{pos}")
        rows[rel] = {"path": rel, "type": ("file", "exec", "symlink")[exact.mode], "size": exact.size}
    emit(env, {"position": pos, "entries": list(rows.values())}, "\n".join(str(r["path"]) for r in rows.values()))


_GIT_MODES = ("100644", "100755", "120000")  # mic's file, exec and symlink modes as git writes them

Side = tuple[bytes, int]  # one side of a file diff: content (a symlink's target) and mode; None when absent


def _lines(text: str) -> list[str]:
    """Split on "\n" only, keeping it: `str.splitlines` also breaks at \f, \v, \x1c-\x1e, \x85, \u2028 and
    \u2029, which gave a bogus "No newline at end of file" mid-file and patches that do not apply."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _unified(path: str, old: Side | None, new: Side | None, a: str, b: str) -> list[str]:
    """A git-style patch for one path: `diff --git` header, mode lines (chmod, new or deleted file), line diff.

    A change between a symlink and anything else is written as a deletion then a creation, as git does."""
    if old is not None and new is not None and (old[1] == 2) != (new[1] == 2):
        return _unified(path, old, None, a, b) + _unified(path, None, new, a, b)
    lines = [f"diff --git {a}/{path} {b}/{path}\n"]
    if old is None and new is not None:
        lines.append(f"new file mode {_GIT_MODES[new[1]]}\n")
    elif new is None and old is not None:
        lines.append(f"deleted file mode {_GIT_MODES[old[1]]}\n")
    elif old is not None and new is not None and old[1] != new[1]:
        lines += [f"old mode {_GIT_MODES[old[1]]}\n", f"new mode {_GIT_MODES[new[1]]}\n"]
    old_data = b"" if old is None else old[0]
    new_data = b"" if new is None else new[0]
    if old_data == new_data:
        return lines
    try:
        old_lines, new_lines = _lines(old_data.decode()), _lines(new_data.decode())
    except UnicodeDecodeError:
        return [*lines, f"Binary files {a}/{path} and {b}/{path} differ\n"]
    diff = difflib.unified_diff(
        old_lines, new_lines, fromfile=f"{a}/{path}" if old is not None else "/dev/null",
        tofile=f"{b}/{path}" if new is not None else "/dev/null",
    )
    return lines + [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in diff]


async def _workspace_side(env: Env, project: Project) -> tuple[bytes, dict[str, Side | None]]:
    """The workspace's changed files as the scan saw them, read by mode: a symlink is its target, never followed
    (a dangling link is a change like any other), exactly what `mic land` would store."""
    from mic.formats.btree_node import FileEntry
    from mic.vcs import read_workspace_file, status

    ws = env.workspace()
    result = await status(ws, project=project)  # with the project: a lost index is rebuilt from the base
    files: dict[str, Side | None] = {}
    for path, (_kind, digest, mode, size) in result.changes.items():
        if digest is None:
            files[path] = None
            continue
        entry = FileEntry(digest, size, mode)
        files[path] = (await asyncio.to_thread(read_workspace_file, ws.file(path), entry, action="diff"), mode)
    return ws.base_tree, files


@click.command("diff")
@click.argument("old", required=False)
@click.argument("new", required=False)
@project_option
@command_options
async def diff_cmd(env: Env, old: str | None, new: str | None) -> None:
    """Git-style diff from OLD (@N, default: the workspace base) to NEW (@N, default: the workspace files)."""
    from mic.formats.btree_node import FileEntry
    from mic.tree import Tree
    from mic.vcs import resolve_position, tree_at

    project = env.project()
    tree = Tree(project)

    async def side(entry: FileEntry | None) -> Side | None:
        return None if entry is None else (await project.read_content(entry.hash), entry.mode)

    chunks: list[dict[str, object]] = []
    pairs: list[tuple[str, Side | None, Side | None]] = []
    if new is None:
        base_root, files = await _workspace_side(env, project)
        _old_pos, old_root = (None, base_root) if old is None else await tree_at(project, resolve_position(old))
        changed = set(files)
        if old is not None:
            changed |= {p async for p, _, _ in tree.diff(old_root, base_root)}
        for path in sorted(changed):
            after = files[path] if path in files else await side(await tree.lookup(base_root, path))
            pairs.append((path, await side(await tree.lookup(old_root, path)), after))
        a, b = (old or "base"), "workspace"
    else:
        if old is None:
            raise BadRequest("give OLD when giving NEW")
        _, old_root = await tree_at(project, resolve_position(old))
        _, new_root = await tree_at(project, resolve_position(new))
        async for path, old_entry, new_entry in tree.diff(old_root, new_root):
            pairs.append((path, await side(old_entry), await side(new_entry)))
        a, b = old, new
    text = []
    for path, before, after in pairs:
        if before == after:  # content and mode: a chmod alone is a change
            continue
        lines = _unified(path, before, after, a.lstrip("@") or "a", b.lstrip("@"))
        chunks.append({"path": path, "old_mode": None if before is None else _GIT_MODES[before[1]],
                       "new_mode": None if after is None else _GIT_MODES[after[1]], "diff": "".join(lines)})
        text.extend(lines)
    emit(env, {"from": a, "to": b, "files": chunks}, lambda: click.echo("".join(text), nl=False))


def register(group: click.Group) -> None:
    """Attach this module's commands to the root `mic` group."""
    for command in (cat_cmd, diff_cmd, log_cmd, ls_cmd, show_cmd):
        group.add_command(command)
