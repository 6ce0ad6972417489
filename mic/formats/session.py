"""MICS: a session record, `sessions/<id>`: why work was done, not only what changed.

Layout (little-endian; "str16"/"str32" = u16/u32 byte length + UTF-8):
    offset  width  field
    0       4      magic  b"MICS"
    4       1      version (1)
    5       1      u8 status: 0 active, 1 landed, 2 abandoned
    6       8      u64 base position (the head the work started from)
    14      8      u64 landed position (0 unless landed)
    22      8      u64 HLC of the session start
    30      …      str16 id, str32 goal
                   u32 M messages:  M × (u8 role 0 human / 1 agent, u64 HLC, str32 text)
                   u32 D decisions: D × (u64 HLC, str32 what, str32 why, u32 A, A × str32 alternative)
                   u32 C changes:   C × (u8 kind 0 added / 1 modified / 2 deleted, str16 path), paths increasing
Invariants: landed position > base when landed, 0 otherwise; roles, kinds and status in range; no trailing bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mickernel.binary import LITTLE, Reader, Writer, check_header
from mickernel.errors import FormatError

__all__ = [
    "KINDS",
    "MAGIC",
    "ROLES",
    "STATUSES",
    "VERSION",
    "Change",
    "Decision",
    "Message",
    "Session",
    "decode_session",
    "encode_session",
]

MAGIC = b"MICS"
VERSION = 1
STATUSES = ("active", "landed", "abandoned")
ROLES = ("human", "agent")
KINDS = ("added", "modified", "deleted")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    hlc: int
    text: str


@dataclass(frozen=True, slots=True)
class Decision:
    hlc: int
    what: str
    why: str
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    path: str


@dataclass(frozen=True, slots=True)
class Session:
    """A session: goal, conversation, decisions, changes, status and base position, with HLC stamps."""

    id: str
    goal: str
    base: int
    hlc: int
    status: str = "active"
    landed: int = 0
    messages: tuple[Message, ...] = ()
    decisions: tuple[Decision, ...] = ()
    changes: tuple[Change, ...] = field(default=())

    def with_(self, **changes: object) -> Session:
        return replace(self, **changes)  # type: ignore[arg-type]


def encode_session(s: Session) -> bytes:
    """Encode a session record."""
    if (s.status == "landed") != (s.landed > 0) or (s.landed and s.landed <= s.base):
        raise ValueError("a landed session needs landed > base; others need landed == 0")
    w = Writer(MAGIC, order=LITTLE).u8(VERSION).u8(STATUSES.index(s.status))
    w.u64(s.base).u64(s.landed).u64(s.hlc).str16(s.id).str32(s.goal).u32(len(s.messages))
    for m in s.messages:
        w.u8(ROLES.index(m.role)).u64(m.hlc).str32(m.text)
    w.u32(len(s.decisions))
    for d in s.decisions:
        w.u64(d.hlc).str32(d.what).str32(d.why).u32(len(d.alternatives))
        for alt in d.alternatives:
            w.str32(alt)
    w.u32(len(s.changes))
    prev = None
    for c in s.changes:
        if prev is not None and c.path <= prev:
            raise ValueError("session changes must be sorted by path and unique")
        prev = c.path
        w.u8(KINDS.index(c.kind)).str16(c.path)
    return w.getvalue()


def _enum(r: Reader, names: tuple[str, ...], what: str) -> str:
    value = r.u8(what)
    if value >= len(names):
        raise FormatError("MICS", f"unknown {what}", offset=r.pos - 1, expected=f"< {len(names)}", got=value)
    return names[value]


def decode_session(raw: bytes | memoryview) -> Session:
    """Decode a MICS record.

    Raises:
        FormatError: bad header, truncation, out-of-range enums, inconsistent landed position, unsorted changes.
    """
    check_header("MICS", raw, MAGIC, (VERSION,))
    r = Reader("MICS", raw, 5, order=LITTLE)
    status = _enum(r, STATUSES, "status")
    base, landed, hlc = r.u64("base"), r.u64("landed"), r.u64("hlc")
    if (status == "landed") != (landed > 0) or (landed and landed <= base):
        raise FormatError("MICS", "landed position inconsistent with status", offset=14,
                          expected=f"> {base} iff landed", got=landed)
    sid, goal = r.str16("id"), r.str32("goal")
    messages = tuple(
        Message(_enum(r, ROLES, "role"), r.u64("hlc"), r.str32("text")) for _ in range(r.count(13, "messages"))
    )
    decisions = []
    for _ in range(r.count(20, "decisions")):
        d_hlc, what, why = r.u64("hlc"), r.str32("what"), r.str32("why")
        alts = tuple(r.str32("alternative") for _ in range(r.count(4, "alternatives")))
        decisions.append(Decision(d_hlc, what, why, alts))
    changes: list[Change] = []
    for _ in range(r.count(3, "changes")):
        at = r.pos
        change = Change(_enum(r, KINDS, "change kind"), r.str16("path"))
        if changes and change.path <= changes[-1].path:
            raise FormatError("MICS", "changes not sorted", offset=at, expected=f"> {changes[-1].path!r}",
                              got=change.path)
        changes.append(change)
    r.end()
    return Session(sid, goal, base, hlc, status, landed, messages, tuple(decisions), tuple(changes))
