"""File locks (`flock(2)`): the kernel drops a lock when its holder dies, even by SIGKILL, so no stale lock
ever needs cleaning by hand.

A lock belongs to an open file, so it lasts as long as the fd does: `hold_lock` for a with-block,
`open_locked` for a lock kept across calls (a process's lifetime, an upload in flight), `locked_fd` for a
file kept open for its data and locked around each access. Exclusive unless `shared`; waits unless told not
to. Fds are close-on-exec (Python's default), so a spawned process never inherits a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

__all__ = ["hold_lock", "locked_fd", "open_locked"]


def open_locked(
    path: str | os.PathLike[str],
    *,
    blocking: bool = True,
    shared: bool = False,
    create: bool = True,
    mode: int = 0o600,
) -> int | None:
    """Open `path` and flock it: the fd that holds the lock (closing it releases the lock), or None if not
    `blocking` and someone else holds it.

    Created with `mode` if absent, unless not `create`: then an absent file raises FileNotFoundError."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), mode)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def hold_lock(
    path: str | os.PathLike[str], *, blocking: bool = True, shared: bool = False, mode: int = 0o600
) -> Iterator[bool]:
    """Flock `path` (created with `mode` if absent) for the with-block; yields whether it was acquired
    (always True when `blocking`)."""
    fd = open_locked(path, blocking=blocking, shared=shared, mode=mode)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def locked_fd(fd: int, *, shared: bool = False) -> Iterator[None]:
    """Flock the open `fd` for the with-block, waiting for it; unlocked, not closed, after it."""
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
