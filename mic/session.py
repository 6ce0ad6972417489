"""Session records in the project store: started, annotated (notes, decisions), then landed or abandoned.

Records live at `sessions/<id>` while active so other agents and humans see them. Every update is a
read-modify-compare-and-swap loop on the record's ETag, so two agents adding notes at once both keep theirs.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections.abc import Callable

from mic.errors import Conflict, PreconditionFailed
from mic.formats.session import Session, decode_session, encode_session
from mic.objects import Project
from mickernel.errors import BadRequest, NotFound

__all__ = ["find_session", "list_sessions", "load_session", "new_session_id", "start_session", "update_session"]

_ID = re.compile(r"[0-9a-f]{12}")


def new_session_id() -> str:
    """A fresh random session id (12 hex digits: 48 bits, ample for one project's sessions)."""
    return secrets.token_hex(6)


def _key(session_id: str) -> str:
    if not _ID.fullmatch(session_id):
        raise BadRequest("a session id is 12 lowercase hex digits", session_id)
    return f"sessions/{session_id}"


async def start_session(project: Project, goal: str, base: int, hlc: int, session_id: str | None = None) -> Session:
    """Create and store a new active session starting at `base`."""
    session = Session(session_id or new_session_id(), goal, base, hlc)
    await project.put_if_absent(_key(session.id), encode_session(session))
    return session


async def load_session(project: Project, session_id: str) -> tuple[Session, str]:
    """Return (session, etag). Raises NotFound if there is no such session."""
    obj = await project.get(_key(session_id))
    if obj is None:
        raise NotFound(f"no session {session_id} in project {project.name!r}")
    return decode_session(obj.data), obj.etag


async def find_session(project: Project, prefix: str) -> Session:
    """Resolve a session id or a unique prefix of one (at least 4 hex digits)."""
    if _ID.fullmatch(prefix):
        return (await load_session(project, prefix))[0]
    if not re.fullmatch(r"[0-9a-f]{4,11}", prefix):
        raise BadRequest("give a session id, or at least 4 of its leading hex digits", prefix)
    keys = await project.store.list(project.key(f"sessions/{prefix}"))
    if not keys:
        raise NotFound(f"no session starting with {prefix} in project {project.name!r}")
    if len(keys) > 1:
        raise BadRequest(f"{prefix} matches {len(keys)} sessions; give more digits", prefix)
    return (await load_session(project, keys[0].rsplit("/", 1)[1]))[0]


async def list_sessions(project: Project) -> list[Session]:
    """Every session of the project, oldest first (by start HLC)."""
    keys = await project.store.list(project.key("sessions/"))
    loaded = await asyncio.gather(*(load_session(project, k.rsplit("/", 1)[1]) for k in keys))
    return sorted((s for s, _ in loaded), key=lambda s: (s.hlc, s.id))


async def update_session(
    project: Project, session_id: str, change: Callable[[Session], Session], *, attempts: int = 20
) -> Session:
    """Apply `change` to the stored session with compare-and-swap, retrying when another writer got in first.

    Raises:
        NotFound: no such session.
        Conflict: the record kept changing under us for `attempts` tries.
    """
    for attempt in range(attempts):
        current, etag = await load_session(project, session_id)
        updated = change(current)
        if updated == current:
            return current
        try:
            await project.put_if_match(_key(session_id), encode_session(updated), etag)
        except PreconditionFailed:
            await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
            continue
        return updated
    raise Conflict(f"session {session_id} kept changing; gave up after {attempts} attempts", sessions=(session_id,))
