"""The usage ledger: how many bytes all daemons sharing a cache root use and hold, so the hard cap holds
across processes (`<root>/v1/usage`, 0600, every access under `flock`).

It counts `used`, the bytes of published blobs and records, and per live daemon (a row named after its temp
area) the bytes it `claimed`: its in-flight writes, its journal segments, what it published but has not yet
moved into `used`, and a little headroom (a lease) so most writes reserve without touching this file. A
daemon may write only within its claim, and a claim is granted only while `used` + every claim stays under
the hard cap, so what all daemons have on disk together stays under it too.

Not durable (no fsync): after a crash the counts can be wrong, and every daemon's rescan (`refresh`, at most
a minute apart) sets `used` from the files again (`recount`). A daemon killed with SIGKILL leaves its row
behind; it is dropped once the daemon's temp area lock is free (`prune`, run by a daemon that opens, or
that is short of room right after it cleaned dead daemons' temp areas). An unreadable file counts as empty.

Byte layout (little-endian), `MAGIC` `MICU`, `VERSION` 1:

| offset   | width | field                                                                  |
|----------|-------|------------------------------------------------------------------------|
| 0        | 4     | magic `MICU`                                                           |
| 4        | 1     | version (1)                                                            |
| 5        | 3     | reserved, zero                                                         |
| 8        | 8     | i64 used: bytes of published blobs and records                         |
| 16       | 8     | i64 applied: running sum of every change applied to used (`recount`)   |
| 24       | 8     | u64 row count N                                                        |
| 32       | 40N   | rows: owner (temp area name, 32 bytes ASCII, NUL-padded), i64 claimed  |
| 32 + 40N | 4     | crc32 of every preceding byte                                          |
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from mickernel.binary import check_header
from mickernel.errors import FormatError
from mickernel.locks import locked_fd

__all__ = ["MAGIC", "VERSION", "Ledger", "State", "View", "decode_usage", "encode_usage"]

MAGIC = b"MICU"
VERSION = 1
_FORMAT = "disk usage ledger"
_HEAD = struct.Struct("<4sB3sqqQ")
_ROW = struct.Struct("<32sq")
_SUM = struct.Struct("<I")


class State(NamedTuple):
    used: int
    applied: int
    claims: dict[str, int]


class View(NamedTuple):
    """What one `exchange` saw and did: the root's published bytes, the other daemons' claims, the running
    change counter, our claim now, and the want granted (None: none fitted)."""

    used: int
    others: int
    applied: int
    claimed: int
    granted: int | None


def encode_usage(state: State) -> bytes:
    rows = [_ROW.pack(owner.encode("ascii"), claim) for owner, claim in state.claims.items()]
    data = _HEAD.pack(MAGIC, VERSION, b"\0\0\0", state.used, state.applied, len(rows)) + b"".join(rows)
    return data + _SUM.pack(zlib.crc32(data))


def decode_usage(data: bytes) -> State:
    """Parse a ledger; FormatError if it is malformed."""
    if len(data) < _HEAD.size + _SUM.size:
        raise FormatError(_FORMAT, "truncated", offset=0, expected=_HEAD.size + _SUM.size, got=len(data))
    check_header(_FORMAT, data, MAGIC, (VERSION,), reserved=3)
    _, _, _, used, applied, count = _HEAD.unpack_from(data)
    end = _HEAD.size + _ROW.size * count
    if len(data) != end + _SUM.size:
        raise FormatError(
            _FORMAT, "length does not match the header", expected=end + _SUM.size, got=len(data)
        )
    if _SUM.unpack_from(data, end)[0] != zlib.crc32(memoryview(data)[:end]):
        raise FormatError(_FORMAT, "checksum mismatch", offset=end)
    claims = {}
    for offset in range(_HEAD.size, end, _ROW.size):
        owner, claim = _ROW.unpack_from(data, offset)
        try:
            claims[owner.rstrip(b"\0").decode("ascii")] = claim
        except UnicodeDecodeError as exc:
            raise FormatError(_FORMAT, "owner is not ASCII", offset=offset) from exc
    return State(used, applied, claims)


class Ledger:
    """One daemon's handle on the ledger (blocking calls: run them in a thread, one at a time)."""

    def __init__(self, path: Path, owner: str, is_alive: Callable[[str], bool]) -> None:
        """`owner` names our row; `is_alive(owner)` says whether another row's daemon still runs."""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._mutex = threading.Lock()  # flock excludes other processes, not our other threads on this fd
        self._owner = owner
        self._is_alive = is_alive

    def exchange(
        self, change: int, hold: int, wants: tuple[int, ...], hard_cap: int, *, prune: bool = False
    ) -> View:
        """Apply `change` to `used`, then set our claim to `hold` plus the first of `wants` that keeps the
        root under `hard_cap` (else to `hold`). `prune` first drops the rows of dead daemons."""
        with self._locked() as state:
            state.used += change
            state.applied += change
            if prune:
                for owner in [o for o in state.claims if o != self._owner and not self._is_alive(o)]:
                    del state.claims[owner]
            others = sum(claim for owner, claim in state.claims.items() if owner != self._owner)
            room = hard_cap - max(state.used, 0) - others - hold
            granted = next((want for want in wants if want <= room), None)
            state.claims[self._owner] = hold + (granted or 0)
            return View(state.used, others, state.applied, state.claims[self._owner], granted)

    def recount(self, published: int, since_applied: int) -> None:
        """Set `used` from a rescan that found `published` bytes, plus the changes others applied since the
        rescan began (`since_applied`, the counter then): a file both listed and applied counts twice until
        the next rescan, an over-count rather than an overshoot."""
        with self._locked() as state:
            state.used = published + state.applied - since_applied

    def leave(self, change: int) -> None:
        """Apply our last `change` to `used`, drop our row and close the file."""
        with self._locked() as state:
            state.used += change
            state.applied += change
            state.claims.pop(self._owner, None)
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Mutable]:
        """flock the ledger, read it, yield it for changes, write it back (unless the body raised), unlock."""
        with self._mutex, locked_fd(self._fd):
            data = os.pread(self._fd, 1 << 20, 0)
            try:
                state = _Mutable(*decode_usage(data)) if data else _Mutable(0, 0, {})
            except FormatError:  # a torn write before a power loss: the next rescan recounts
                state = _Mutable(0, 0, {})
            yield state
            new = encode_usage(State(state.used, state.applied, state.claims))
            os.pwrite(self._fd, new, 0)
            if len(new) < len(data):
                os.ftruncate(self._fd, len(new))


class _Mutable:
    __slots__ = ("applied", "claims", "used")

    def __init__(self, used: int, applied: int, claims: dict[str, int]) -> None:
        self.used, self.applied, self.claims = used, applied, claims
