"""mic's operations on a project and a workspace (the layer under the CLI): checkout, status, land, positions.

Each function takes opened objects and returns data; printing belongs to the CLI. Workspace file work (scan,
hashing, writing files) runs in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mic.errors import Conflict, WorkspaceError
from mic.formats.btree_node import FileEntry
from mic.formats.chunked import CHUNK_SIZE
from mic.formats.session import Session
from mic.landing import LandResult, land, roll_forward
from mic.objects import Project, content_hash
from mic.paths import path_problem
from mic.session import load_session, start_session
from mic.statcache import ScanResult, file_mode, hash_path, scan, stat_key, stat_key_of
from mic.tree import EMPTY_ROOT, Tree
from mic.watch.client import WatchSettings, scan_workspace
from mic.workspace import Workspace, WorkspaceState, discard_temp
from mickernel.errors import BadRequest, NotFound

__all__ = [
    "LandOutcome", "Synced", "checkout", "land_workspace", "read_workspace_file", "resolve_position",
    "restore_index_base", "status", "sync_to", "tree_at",
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
    """What `sync_to` did: paths written or removed, paths left alone because they had local edits, and paths
    skipped because mic no longer tracks them (`mic.paths`)."""

    updated: int
    kept: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


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


def _remove_if_unchanged(ws: Workspace, rel: str, old: FileEntry | None) -> bool:
    """Remove `rel` (and the directories it leaves empty) if it still holds `old`; whether it did.

    Check and removal are one call in one thread, so an edit can slip in only in between (microseconds). Below
    a symlink (kept as a local edit) nothing is touched: it would act on wherever the link points."""
    try:
        ws.refuse_symlinked_parent(rel)
    except WorkspaceError:
        return False
    if not _disk_matches(ws, rel, old):
        return False
    ws.remove_file(rel)
    return True


def _write_if_unchanged(
    ws: Workspace, rel: str, old: FileEntry | None, new: FileEntry, data: bytes | Path
) -> Path | None:
    """Write `data` (content of `new`, or a `Workspace.temp_file` holding it, then moved into place) at `rel` if
    the disk still holds `old`; the path written, or None if not.

    Checked here, after the content was fetched and just before the write: an edit made while the fetch ran
    (seconds on S3) is seen and kept. An empty directory where the base has no file (left by the tracked files
    this sync removed) counts as nothing there; a non-empty one, or a parent that is a file, is kept."""
    full = ws.file(rel)
    try:
        ws.refuse_symlinked_parent(rel)  # below a symlink kept as a local edit: writing would leave the workspace
    except WorkspaceError:
        return None
    if old is None:
        try:
            os.rmdir(full)  # fails unless it is an empty directory
        except OSError:
            pass
    if not _disk_matches(ws, rel, old):
        return None
    try:
        if isinstance(data, Path):
            return ws.install(rel, data)
        return ws.write_file(rel, data, new.mode)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, WorkspaceError):
        return None  # a parent is a file (kept as a local edit), or was removed, or a directory is in the way


async def _stream_if_unchanged(
    project: Project, ws: Workspace, rel: str, old: FileEntry | None, new: FileEntry
) -> Path | None:
    """`_write_if_unchanged` for a file above the chunk size, which is never whole in memory: each chunk goes to
    the temp file as it is fetched and verified, and `_write_if_unchanged` moves it over `rel` (the disk checked
    right before) once the whole file's BLAKE3 matched. The temp file is closed and removed on every failure
    and cancellation, so a corrupt chunk (IntegrityError) or a Ctrl-C leaves the workspace file as it was.

    The temp file is created here, not in a thread: a task cancelled while a thread created it would run its
    cleanup first, and the file (and its fd) would outlive it."""
    try:
        out, tmp = ws.temp_file(rel, new.mode)
    except (FileExistsError, NotADirectoryError, WorkspaceError):
        return None  # a parent is a file (kept as a local edit), or a symlink
    try:
        with out:  # closing waits for a write still running in its thread (the buffered file's lock)
            async with aclosing(project.iter_content(new.hash)) as chunks:
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)
        return await asyncio.to_thread(_write_if_unchanged, ws, rel, old, new, tmp)
    finally:
        discard_temp(tmp)  # not awaited: it must run even in a task being cancelled


async def sync_to(
    project: Project, ws: Workspace, target_tree: bytes, skip: frozenset[str] = frozenset()
) -> Synced:
    """Make the workspace files match `target_tree` for every path that differs from the base (except `skip`).

    A file is replaced or removed only while it still holds its base version, checked right before the write
    (after the content was fetched). One edited since the last scan (say, during a `mic land`), or an untracked
    file in the way, is never overwritten: it is kept as it is, the index records the target version as its base
    (so `mic status` shows it changed against what landed), and its path is returned in `kept` for the caller to
    report (`mic land` records it as unmerged: `WorkspaceState.unmerged`).

    All removals run before any write: a directory replaced by a file (`d/x` → `d`) must be gone, and a file
    replaced by a directory (`d` → `d/x`) removed, before the new path can be written. A path mic no longer
    tracks (a `.git` component or a mic temp-file name, allowed by older versions) is left alone and returned in
    `skipped`: one such path in history must not make every checkout fail."""
    tree = Tree(project)
    diffs: list[tuple[str, FileEntry | None, FileEntry | None]] = []
    skipped: list[str] = []
    async for d in tree.diff(ws.base_tree, target_tree):
        if d[0] in skip:
            continue
        if path_problem(d[0]) is not None:
            skipped.append(d[0])
            continue
        diffs.append(d)
    ws.index.entries  # noqa: B018  (decode the index here, not lazily and concurrently in the worker threads)
    sem = asyncio.Semaphore(_PARALLEL)
    kept: list[str] = []

    async def settle(path: str, new: FileEntry | None) -> None:
        """The disk did not hold the base version: leave it, and record the target as the base."""
        if not await asyncio.to_thread(_disk_matches, ws, path, new):
            kept.append(path)  # a local edit: keep it (when it already is the target, nothing is lost)
        ws.index.set_base_unverified(path, None if new is None else (new.hash, new.mode, new.size))

    async def remove(path: str, old: FileEntry | None) -> None:
        if await asyncio.to_thread(_remove_if_unchanged, ws, path, old):
            ws.index.entries.pop(path, None)
        else:
            await settle(path, None)

    async def write(path: str, old: FileEntry | None, new: FileEntry) -> None:
        async with sem:  # held through the write: at most _PARALLEL contents (or chunks) in memory
            if new.mode != 2 and new.size > CHUNK_SIZE:
                full = await _stream_if_unchanged(project, ws, path, old, new)
            else:
                data = await project.read_content(new.hash)
                full = await asyncio.to_thread(_write_if_unchanged, ws, path, old, new, data)
        if full is None:
            await settle(path, new)
        else:
            ws.index.set_base(path, full, new.hash, new.mode, new.size)

    await asyncio.gather(*(remove(path, old) for path, old, new in diffs if new is None))
    await asyncio.gather(*(write(path, old, new) for path, old, new in diffs if new is not None))
    return Synced(len(diffs) - len(kept), tuple(sorted(kept)), tuple(sorted(skipped)))


async def checkout(
    project: Project, root: Path, *, store_url: str, s3_endpoint_url: str | None, position: int | None = None,
    skipped: list[str] | None = None,
) -> Workspace:
    """Create a workspace at `root` holding the project at `position` (default: the tip).

    Paths of that tree mic no longer tracks (see `sync_to`) are not written; they are appended to `skipped`."""
    pos, tree_hash = await tree_at(project, position)
    head, _ = await project.read_head()
    if root.exists() and any(p.name != ".mic" for p in root.iterdir()):
        raise WorkspaceError(f"{root} exists and is not empty; check out into a new or empty directory")
    ws = Workspace.create(
        root, WorkspaceState(project.name, 0, EMPTY_ROOT.hex()), store_url=store_url, s3_endpoint_url=s3_endpoint_url
    )
    ws.clock.observe(head.hlc)
    with ws.locked():
        synced = await sync_to(project, ws, tree_hash)
        ws.state.base, ws.state.base_tree = pos, tree_hash.hex()
        await asyncio.to_thread(ws.save)
    if skipped is not None:
        skipped.extend(synced.skipped)
    return ws


async def restore_index_base(project: Project, ws: Workspace) -> None:
    """Re-seed a lost or damaged index (`Index.lost`) with the base tree's entries, their stat unknown.

    The index is the only local record of what the base holds: without this, a base file deleted from disk is
    not reported (nothing says it was there) and every other one shows as "added". Seeded entries never match a
    stat, so the next scan re-hashes each file against its base."""
    if ws.index.lost and ws.base_tree != EMPTY_ROOT:
        entries = ws.index.entries
        async for path, entry in Tree(project).items(ws.base_tree):
            e = entries.get(path)
            if e is None or e[5] is None:
                entries[path] = (-1, -1, -1, b"", 0, entry.hash, entry.mode, entry.size, -1)
    ws.index.lost = False


async def status(
    ws: Workspace, *, save: bool = True, watch: WatchSettings | None = None, project: Project | None = None
) -> ScanResult:
    """Scan the workspace against its base, using and refreshing the stat cache (saved, under the workspace
    lock, unless `save` is False); through the workspace's file watcher unless `watch` is None or disabled.

    Given `project`, a lost or damaged index is first rebuilt from the base tree (`restore_index_base`)."""
    if not save:
        return await _scan(ws, watch, project)
    with ws.locked():
        result = await _scan(ws, watch, project)
        if result.rehashed or ws.index.unsaved:
            await asyncio.to_thread(ws.index.save)
    return result


async def _scan(ws: Workspace, watch: WatchSettings | None, project: Project | None) -> ScanResult:
    for _ in range(2):  # a second round when the scan itself found the stored entries damaged
        if project is not None and ws.index.lost:
            await restore_index_base(project, ws)
        if watch is None:
            result = await asyncio.to_thread(scan, ws.root, ws.index)
        else:
            result = await asyncio.to_thread(scan_workspace, ws.root, ws.index, watch)
        if project is None or not ws.index.lost:
            break
    return result


@dataclass(frozen=True)
class LandOutcome:
    result: LandResult
    session: Session
    synced: int
    changes: dict[str, str]
    kept: tuple[str, ...] = ()  # files that landed, edited here during the land: left as they are
    skipped: tuple[str, ...] = ()  # paths that landed which mic no longer tracks (`Synced.skipped`): not written
    unmerged: tuple[str, ...] = ()  # kept files another session changed too: now `WorkspaceState.unmerged`


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
    """Land every change in the workspace as its active session (or a new one with `goal`).

    Runs under the workspace lock, from the scan to the saved new base: a `mic session note` meanwhile waits
    instead of writing back the state it read before the land."""
    with ws.locked():
        return await _land_locked(project, ws, goal, kill_at=kill_at, watch=watch)


async def _land_locked(
    project: Project, ws: Workspace, goal: str | None, *, kill_at: str | None, watch: WatchSettings | None
) -> LandOutcome:
    scanned = await status(ws, save=False, watch=watch, project=project)  # saved once, with the new base
    if ws.clear_merged(scanned.changes):
        await asyncio.to_thread(ws.save_state)
    if ws.state.unmerged:
        raise _unmerged_conflict(ws)
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
        async with sem:  # at most _PARALLEL contents (or chunks) in memory
            if entry.mode != 2 and entry.size > CHUNK_SIZE:
                return await _put_large_file(project, full, entry)
            data = await asyncio.to_thread(read_workspace_file, full, entry)
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
    reverted: list[str] = []
    if result.recovered:
        skip = await _recovered_bases(project, ws, result, changes, reverted)
    else:
        for path, entry in changes.items():
            if entry is None:
                ws.index.entries.pop(path, None)
            else:
                ws.index.set_landed(path, entry.hash, entry.mode, entry.size)
        skip = frozenset(changes)
    old_base = ws.state.base
    synced = await sync_to(project, ws, result.previous_tree, skip=skip)
    # every path the sync diffs was changed by a landing after our base: one kept with a local edit is unmerged
    # (paths in `reverted` are this session's own landing, put back by the user: nothing of another's is lost)
    ws.state.unmerged.update(await _changed_by(project, synced.kept, old_base, result.landing.position))
    ws.state.base, ws.state.base_tree, ws.state.session = result.landing.position, result.landing.tree.hex(), None
    await asyncio.to_thread(ws.save)
    kept = tuple(sorted({*synced.kept, *reverted}))
    return LandOutcome(result, session, synced.updated, kinds, kept, synced.skipped, synced.kept)


async def _changed_by(project: Project, paths: tuple[str, ...], old_base: int, position: int) -> dict[str, str]:
    """For each of `paths`, the session of the last landing in (old_base, position) that touched it ("" if none
    named it exactly, e.g. a directory that another landing's file replaced)."""
    if not paths:
        return {}
    positions = range(old_base + 1, position)
    records = await asyncio.gather(*(project.landing(p) for p in positions))
    found = dict.fromkeys(paths, "")
    wanted = frozenset(paths)
    for rec in records:
        if rec is not None and rec.session:
            for p in wanted.intersection(rec.paths):
                found[p] = rec.session
    return found


def _unmerged_conflict(ws: Workspace) -> Conflict:
    """The error `mic land` gives while paths are unmerged (see `WorkspaceState.unmerged`)."""
    paths = sorted(ws.state.unmerged)
    sessions = tuple(dict.fromkeys(s for p in paths if (s := ws.state.unmerged[p])))
    shown = ", ".join(
        f"{p} (changed by session {s})" if (s := ws.state.unmerged[p]) else p for p in paths[:20]
    ) + (" …" if len(paths) > 20 else "")
    return Conflict(
        f"{len(paths)} unmerged path(s): {shown}. Another session's landed change to them was not applied here "
        f"because you had local edits, and landing your version would undo it. Merge its version "
        f"(`mic cat <path>`, the base @{ws.state.base}) into yours and run `mic resolve <path>`, or take theirs by "
        "making the file equal to it; nothing was landed",
        paths=tuple(paths), sessions=sessions,
    )


async def _recovered_bases(
    project: Project, ws: Workspace, result: LandResult, changes: dict[str, FileEntry | None], reverted: list[str]
) -> frozenset[str]:
    """After crash recovery (an earlier run of this session landed `result.landing`): make what landed the base
    of the landing's paths, unverified, and return them as the paths the sync must not touch.

    The files may have moved on since that run. One the scan no longer reports as changed was put back to its old
    base by the user after the crash: it is kept as it is, like any local edit, and appended to `reverted` for
    the caller to report; the sync must not overwrite it with the version that landed."""
    landed_tree = Tree(project)
    own = frozenset(result.landing.paths)
    for path in sorted(own):
        now = await landed_tree.lookup(result.landing.tree, path)
        ws.index.set_base_unverified(path, None if now is None else (now.hash, now.mode, now.size))
        if path not in changes:
            reverted.append(path)
    return own


def read_workspace_file(path: Path, entry: FileEntry, *, action: str = "land") -> bytes:
    """A workspace file's content as mic stores it (a symlink is its target, never followed), checked against
    the hash the scan saw; WorkspaceError naming `action` to rerun if the file changed since."""
    data = os.fsencode(os.readlink(path)) if entry.mode == 2 else path.read_bytes()
    if content_hash(data) != entry.hash:
        raise _changed(path, action)
    return data


def _changed(path: Path, action: str) -> WorkspaceError:
    return WorkspaceError(f"{path} changed while running `mic {action}`; run `mic {action}` again")


async def _put_large_file(project: Project, path: Path, entry: FileEntry) -> int:
    """Store a regular file above the chunk size chunk by chunk (`Project.put_chunks`), never whole in memory;
    return the objects written. Its MICC list is stored only if the file is still what the scan saw (its hash
    and size), else WorkspaceError as from `read_workspace_file` (chunks already stored are harmless orphans)."""
    with await asyncio.to_thread(open, path, "rb") as f:
        h, size, chunk_hashes, written = await project.put_chunks(_pieces(f, entry.size))
    if h != entry.hash or size != entry.size:
        raise _changed(path, "land")
    return written + await project.put_chunk_list(h, chunk_hashes)


def _pieces(f: BinaryIO, size: int) -> Iterator[bytes]:
    """`f` in CHUNK_SIZE pieces, stopping once past `size` bytes: a file that keeps growing (a log) ends the read."""
    done = 0
    while done <= size and (piece := f.read(CHUNK_SIZE)):
        done += len(piece)
        yield piece
