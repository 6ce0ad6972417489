"""mic's operations on a project and a workspace (the layer under the CLI): checkout, status, land, positions.

Each function takes opened objects and returns data; printing belongs to the CLI. Workspace file work (scan,
hashing, writing files) runs in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mic.errors import BadRequest, NotFound, WorkspaceError
from mic.formats.btree_node import FileEntry
from mic.formats.session import Session
from mic.landing import LandResult, land, roll_forward
from mic.objects import Project, content_hash
from mic.session import load_session, start_session
from mic.statcache import ScanResult, file_mode, hash_path, scan, stat_key, stat_key_of
from mic.tree import EMPTY_ROOT, Tree
from mic.watch.client import WatchSettings, scan_workspace
from mic.workspace import Workspace, WorkspaceState

__all__ = [
    "LandOutcome", "Synced", "checkout", "land_workspace", "resolve_position", "status", "sync_to", "tree_at",
]

_PARALLEL = 16


async def tree_at(project: Project, position: int | None) -> tuple[int, bytes]:
    """(position, root tree) at `position`, or at the true tip when None."""
    if position is None:
        tip, _ = await roll_forward(project)
        return tip.position, tip.tree
    if position == 0:
        return 0, EMPTY_ROOT
    rec = await project.landing(position)
    if rec is None:
        raise NotFound(f"nothing has landed at position {position} in project {project.name!r}")
    return position, rec.tree


def resolve_position(text: str | None) -> int | None:
    """Parse `@N` (or N); None means the tip."""
    if text is None:
        return None
    digits = text.removeprefix("@")
    if not digits.isdigit():
        raise BadRequest("a position is @N with N a landing number, e.g. @12", text)
    return int(digits)


@dataclass(frozen=True)
class Synced:
    """What `sync_to` did: paths written or removed, and paths left alone because they had local edits."""

    updated: int
    kept: tuple[str, ...] = ()


def _disk_matches(ws: Workspace, rel: str, expected: FileEntry | None) -> bool:
    """Whether the workspace file `rel` is exactly `expected` (None: nothing there).

    The stat cache answers for a file whose stat is what the last scan hashed; anything else is re-hashed."""
    full = ws.file(rel)
    try:
        st = full.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return expected is None
    if expected is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return False
    mode = file_mode(st)
    if mode != expected.mode:
        return False
    e = ws.index.entries.get(rel)
    if e is not None and e[3] == expected.hash and stat_key(e) == stat_key_of(st, mode):
        return True
    try:
        return hash_path(full, mode) == expected.hash
    except OSError:
        return False


async def sync_to(
    project: Project, ws: Workspace, target_tree: bytes, skip: frozenset[str] = frozenset()
) -> Synced:
    """Make the workspace files match `target_tree` for every path that differs from the base (except `skip`).

    A file is replaced or removed only while it still holds its base version. One edited since the last scan
    (say, during a `mic land`), or an untracked file in the way, is never overwritten: it is kept as it is, the
    index records the target version as its base (so `mic status` shows it changed against what landed), and
    its path is returned in `kept` for the caller to report."""
    tree = Tree(project)
    diffs = [d async for d in tree.diff(ws.base_tree, target_tree) if d[0] not in skip]
    ws.index.entries  # noqa: B018  (decode the index here, not lazily and concurrently in the worker threads)
    sem = asyncio.Semaphore(_PARALLEL)
    kept: list[str] = []

    async def one(path: str, old: FileEntry | None, new: FileEntry | None) -> None:
        if not await asyncio.to_thread(_disk_matches, ws, path, old):
            if not await asyncio.to_thread(_disk_matches, ws, path, new):
                kept.append(path)  # a local edit: keep it (when it already is the target, nothing is lost)
            ws.index.set_base_unverified(path, None if new is None else (new.hash, new.mode, new.size))
            return
        if new is None:
            await asyncio.to_thread(ws.remove_file, path)
            ws.index.entries.pop(path, None)
            return
        async with sem:
            data = await project.read_content(new.hash)
        full = await asyncio.to_thread(ws.write_file, path, data, new.mode)
        ws.index.set_base(path, full, new.hash, new.mode, new.size)

    await asyncio.gather(*(one(path, old, new) for path, old, new in diffs))
    return Synced(len(diffs) - len(kept), tuple(sorted(kept)))


async def checkout(
    project: Project, root: Path, *, store_url: str, s3_endpoint_url: str | None, position: int | None = None
) -> Workspace:
    """Create a workspace at `root` holding the project at `position` (default: the tip)."""
    pos, tree_hash = await tree_at(project, position)
    head, _ = await project.read_head()
    if root.exists() and any(p.name != ".mic" for p in root.iterdir()):
        raise WorkspaceError(f"{root} exists and is not empty; check out into a new or empty directory")
    ws = Workspace.create(
        root, WorkspaceState(project.name, 0, EMPTY_ROOT.hex()), store_url=store_url, s3_endpoint_url=s3_endpoint_url
    )
    ws.clock.observe(head.hlc)
    await sync_to(project, ws, tree_hash)
    ws.state.base, ws.state.base_tree = pos, tree_hash.hex()
    await asyncio.to_thread(ws.save)
    return ws


async def status(ws: Workspace, *, save: bool = True, watch: WatchSettings | None = None) -> ScanResult:
    """Scan the workspace against its base, using and refreshing the stat cache (saved unless `save` is False);
    through the workspace's file watcher unless `watch` is None or disabled."""
    if watch is None:
        result = await asyncio.to_thread(scan, ws.root, ws.index)
    else:
        result = await asyncio.to_thread(scan_workspace, ws.root, ws.index, watch)
    if (result.rehashed or ws.index.unsaved) and save:
        await asyncio.to_thread(ws.index.save)
    return result


@dataclass(frozen=True)
class LandOutcome:
    result: LandResult
    session: Session
    synced: int
    changes: dict[str, str]
    kept: tuple[str, ...] = ()  # files other sessions changed, edited here during the land: left as they are


async def _session_for_land(project: Project, ws: Workspace, goal: str | None) -> Session:
    if ws.state.session:
        session, _ = await load_session(project, ws.state.session)
        if session.status == "abandoned":
            raise WorkspaceError(f"session {session.id} is {session.status}; start a new one with `mic session start`")
        return session
    if not goal:
        raise BadRequest("no active session: give a goal (`mic land \"why\"`) or run `mic session start \"goal\"`")
    session = await start_session(project, goal, ws.state.base, ws.clock.tick())
    ws.state.session = session.id
    await asyncio.to_thread(ws.save_state)
    return session


async def land_workspace(
    project: Project, ws: Workspace, goal: str | None, *, kill_at: str | None = None,
    watch: WatchSettings | None = None,
) -> LandOutcome:
    """Land every change in the workspace as its active session (or a new one with `goal`)."""
    scanned = await status(ws, save=False, watch=watch)  # the index is saved once, with the landing's new base
    if not scanned.changes:
        if scanned.rehashed:
            await asyncio.to_thread(ws.index.save)
        raise WorkspaceError("nothing to land: the workspace matches its base")
    session = await _session_for_land(project, ws, goal)
    changes = {
        p: None if h is None else FileEntry(h, size, mode) for p, (kind, h, mode, size) in scanned.changes.items()
    }
    kinds = {p: kind for p, (kind, *_rest) in scanned.changes.items()}
    sem = asyncio.Semaphore(_PARALLEL)

    async def put_one(path: str, entry: FileEntry) -> int:
        full = ws.file(path)
        async with sem:
            data = await asyncio.to_thread(_read_verified, full, entry)
            return (await project.put_content(data, entry.hash))[1]

    async def write_blobs() -> int:
        counts = await asyncio.gather(*(put_one(p, e) for p, e in changes.items() if e is not None))
        return sum(counts)

    def stamp(tip_hlc: int) -> int:
        ws.clock.observe(tip_hlc)
        return ws.clock.tick()

    result = await land(
        project, session, changes, kinds, write_blobs, hlc=stamp, goal=goal, kill_at=kill_at
    )
    landed_tree = Tree(project)
    for path, entry in changes.items():
        if result.recovered:  # an earlier run landed; the files may have moved on since: re-check them
            now = await landed_tree.lookup(result.landing.tree, path)
            ws.index.set_base_unverified(path, None if now is None else (now.hash, now.mode, now.size))
        elif entry is None:
            ws.index.entries.pop(path, None)
        else:
            ws.index.set_landed(path, entry.hash, entry.mode, entry.size)
    synced = await sync_to(project, ws, result.previous_tree, skip=frozenset(changes))
    ws.state.base, ws.state.base_tree, ws.state.session = result.landing.position, result.landing.tree.hex(), None
    await asyncio.to_thread(ws.save)
    return LandOutcome(result, session, synced.updated, kinds, synced.kept)


def _read_verified(path: Path, entry: FileEntry) -> bytes:
    data = os.fsencode(os.readlink(path)) if entry.mode == 2 else path.read_bytes()
    if content_hash(data) != entry.hash:
        raise WorkspaceError(f"{path} changed while landing; run `mic land` again")
    return data
