"""Record-first, coordinator-free landing: the conditional create of `landing/<T+1>` is the only arbiter.

Order (architecture.md; the original design moved the head first and could miss conflicts after a crash):
  1. read `head`, roll forward over `landing/<p+1>`, … to the true tip T (heads may lag);
  2. check the session's paths against every landing in (base, T]: bloom filter first, then the exact path list;
     a landing of this very session means an earlier attempt already landed (crash recovery), not a conflict;
  3. write blobs and tree nodes (`put_if_absent`: idempotent, invisible until referenced);
  4. create `landing/<T+1>` with `put_if_absent` — the linearization point; on a lost race back off and go to 1;
  5. advance `head` with compare-and-swap (best effort: readers roll forward anyway);
  6. mark the session record landed (derived data, rebuildable from the landing record).
A crash before 4 leaves nothing visible; after 4 the landing is complete and the next lander rolls forward.
`kill_at` names a step after which the process SIGKILLs itself: the crash tests run the real code path.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from mic.bloom import Bloom
from mic.errors import Conflict, LostLanding, PreconditionFailed
from mic.formats.btree_node import FileEntry
from mic.formats.head import Head, encode_head
from mic.formats.landing import Landing, encode_landing
from mic.formats.session import Change, Session, encode_session
from mic.objects import Project, landing_key
from mic.paths import check_path
from mic.session import update_session
from mic.tree import EMPTY_ROOT, Tree

__all__ = ["KILL_POINTS", "LandResult", "land", "roll_forward"]

KILL_POINTS = ("rolled-forward", "checked", "objects-written", "landing-created", "head-advanced", "session-updated")


@dataclass(frozen=True)
class LandResult:
    """Where the session landed, what it produced, and what it cost."""

    landing: Landing
    previous_tree: bytes
    objects_written: int
    attempts: int
    recovered: bool = False


def _maybe_kill(kill_at: str | None, point: str) -> None:
    if kill_at == point:
        os.kill(os.getpid(), signal.SIGKILL)


async def roll_forward(project: Project) -> tuple[Head, str]:
    """Return (true tip, ETag of the stored head): the head, advanced over landing records it does not cover."""
    head, etag = await project.read_head()
    position, tree, hlc = head.position, head.tree, head.hlc
    while (rec := await project.landing(position + 1)) is not None:
        position, tree, hlc = rec.position, rec.tree, rec.hlc
    return Head(position, tree, hlc), etag


def _dirs(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _nesting_clashes(ours: frozenset[str], our_dirs: set[str], theirs: tuple[str, ...]) -> set[str]:
    """Our paths that are a directory of one of theirs, or inside one of theirs (file `a` vs file `a/b`)."""
    clashes = set()
    for q in theirs:
        if q in our_dirs:
            clashes |= {p for p in ours if p.startswith(q + "/")}
        clashes |= {d for d in _dirs(q) if d in ours}
    return clashes


async def _check(project: Project, session: Session, paths: frozenset[str], tip: int) -> Landing | None:
    """Raise Conflict for landings in (base, tip] touching `paths`; return this session's own landing if any.

    Raises LostLanding if a record in (base, tip] is missing."""
    conflict_paths: set[str] = set()
    conflict_sessions: list[str] = []
    our_dirs: set[str] | None = None
    positions = range(session.base + 1, tip + 1)
    records = await asyncio.gather(*(project.landing(p) for p in positions))
    for position, rec in zip(positions, records, strict=True):
        if rec is None:  # below the rolled-forward tip every record exists; skipping one could miss a conflict
            raise LostLanding(position)
        if rec.session == session.id:
            return rec
        hit: set[str] = set()
        if any(rec.bloom.may_contain(p) for p in paths):
            hit = set(paths.intersection(rec.paths))  # confirm: the bloom filter may say yes falsely, never no
        if our_dirs is None:
            our_dirs = {d for p in paths for d in _dirs(p)}
        hit |= _nesting_clashes(paths, our_dirs, rec.paths)
        if hit:
            conflict_paths |= hit
            conflict_sessions.append(rec.session)
    if conflict_paths:
        shown = ", ".join(sorted(conflict_paths)[:20]) + (" …" if len(conflict_paths) > 20 else "")
        raise Conflict(
            f"session {session.id} conflicts with landed session(s) {', '.join(conflict_sessions)} on {shown}; "
            "nothing was changed",
            paths=tuple(sorted(conflict_paths)),
            sessions=tuple(conflict_sessions),
        )
    return None


async def _advance_head(project: Project, rec: Landing) -> None:
    for _ in range(8):
        head, etag = await project.read_head()
        if head.position >= rec.position:
            return  # a later lander already moved it past us
        try:
            await project.put_if_match("head", encode_head(Head(rec.position, rec.tree, rec.hlc)), etag)
            return
        except PreconditionFailed:
            continue  # someone else moved it; re-read and try again (readers roll forward regardless)


async def _finish_session(project: Project, session: Session, rec: Landing, changes: tuple[Change, ...]) -> None:
    def mark(current: Session) -> Session:
        return current.with_(status="landed", landed=rec.position, changes=changes, goal=rec.goal)

    try:
        await update_session(project, session.id, mark)
    except Exception:
        # derived data: a missing record (e.g. an imported commit) is recreated from what the landing knows
        if (await project.get(f"sessions/{session.id}")) is not None:
            raise
        await project.ensure(f"sessions/{session.id}", encode_session(mark(session)))


async def _landed_changes(project: Project, rec: Landing) -> tuple[Change, ...]:
    """The changes `rec` made, from its own path list and trees.

    Crash recovery finds a landing of this session made by an earlier run; what landed is that record's paths,
    not the paths the current run was asked to land (the workspace may have moved on)."""
    if rec.position == 1:
        before_tree = EMPTY_ROOT
    else:
        before = await project.landing(rec.position - 1)
        if before is None:
            raise LostLanding(rec.position - 1)
        before_tree = before.tree
    tree = Tree(project)
    changes = []
    for path in rec.paths:
        if await tree.lookup(rec.tree, path) is None:
            kind = "deleted"
        elif await tree.lookup(before_tree, path) is None:
            kind = "added"
        else:
            kind = "modified"
        changes.append(Change(kind, path))
    return tuple(changes)


async def land(
    project: Project,
    session: Session,
    changes: Mapping[str, FileEntry | None],
    kinds: Mapping[str, str],
    write_blobs: Callable[[], Awaitable[int]],
    *,
    hlc: Callable[[int], int],
    goal: str | None = None,
    kill_at: str | None = None,
    max_attempts: int = 64,
) -> LandResult:
    """Land `changes` (path → new entry, or None to delete) for `session`, record-first.

    Args:
        kinds: path → "added" | "modified" | "deleted", recorded in the session.
        write_blobs: stores the changed files' contents, returns objects written (called once, after the check).
        hlc: given the tip's HLC, returns the landing's stamp (after it and after every local event).
        goal: overrides the session goal for the record.

    Raises:
        BadRequest: a path mic cannot track (`mic.paths`); nothing was written.
        Conflict: a landing since the session's base touched one of these paths (nothing changed), or the race
            was lost `max_attempts` times.
    """
    for path in changes:  # before anything is written: a path mic cannot track never reaches a record
        check_path(path)
    paths = frozenset(changes)
    ordered = tuple(sorted(paths))
    tree = Tree(project)
    blobs_written = -1
    for attempt in range(1, max_attempts + 1):
        tip, _ = await roll_forward(project)
        _maybe_kill(kill_at, "rolled-forward")
        own = await _check(project, session, paths, tip.position)
        _maybe_kill(kill_at, "checked")
        if own is not None:  # an earlier, interrupted attempt of this session already landed: finish it
            await _advance_head(project, own)
            await _finish_session(project, session, own, await _landed_changes(project, own))
            return LandResult(own, own.tree, 0, attempt, recovered=True)
        if blobs_written < 0:
            blobs_written = await write_blobs()
        new_root, nodes = await tree.apply(tip.tree, changes)
        if await project.landing(tip.position + 1) is not None:
            continue  # already lost this round: re-check against the new landing before paying for writes
        written = blobs_written + await project.put_nodes(nodes)
        _maybe_kill(kill_at, "objects-written")
        rec = Landing(
            tip.position + 1, session.base, new_root, hlc(tip.hlc), session.id, goal or session.goal, ordered,
            Bloom.of(ordered),
        )
        try:
            await project.put_if_absent(landing_key(rec.position), encode_landing(rec))
        except PreconditionFailed:
            # full jitter, growing with the losses seen: spreads contending landers out instead of retrying
            # in lockstep (every lost round costs the loser its tree-node writes)
            await asyncio.sleep(random.uniform(0, min(0.2, 0.004 * 2 ** min(attempt, 6))))
            continue  # another lander took T+1: roll forward and check against it too
        _maybe_kill(kill_at, "landing-created")
        await _advance_head(project, rec)
        _maybe_kill(kill_at, "head-advanced")
        await _finish_session(project, session, rec, tuple(Change(kinds[p], p) for p in ordered))
        _maybe_kill(kill_at, "session-updated")
        return LandResult(rec, tip.tree, written + 3, attempt)  # + landing, head, session
    raise Conflict(
        f"session {session.id} lost the landing race {max_attempts} times; nothing was changed, try again",
        sessions=(session.id,),
    )
