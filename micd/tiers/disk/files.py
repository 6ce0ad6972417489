"""Blocking file operations of the disk tier (always called through `asyncio.to_thread`).

Temp files live in a per-instance directory `<root>/v1/tmp/<pid>-<token>/` whose `lock` file is held with
`flock` for the instance's lifetime. The kernel drops that lock when the process dies, even by SIGKILL, so an
opening instance removes exactly the temp directories of dead writers and never a live writer's file (several
daemons share one root).

Publishing is write → fsync → rename. The parent directory is not fsynced: after a power loss a blob may be
missing (a cache miss), but a name that is visible always points at fully written, verified bytes.

A large write asks the kernel to start writing each batch back as soon as it is written
(`sync_file_range(SYNC_FILE_RANGE_WRITE)`, Linux), so the device works while the upload streams and the final
fsync finds little left to flush; without it a 1 GiB upload waits for the whole GiB at the end.

`put_small` is that same sequence for a blob already in memory, done in ONE worker-thread call (verify,
exists check, create, write, fsync, rename) instead of one hop per step: for 4 KiB blobs the hops, not the
bytes, were the cost next to the fsync itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from micd.blobs import Verifier
from micd.store import Digest, new_hasher

__all__ = [
    "FULL_ERRNOS",
    "Sig",
    "TempArea",
    "TempWriter",
    "bump_atime",
    "clean_dead_temp",
    "exists_all",
    "open_large",
    "put_small",
    "read_file",
    "read_small",
    "unlink_if_same",
]

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_LOCK = "lock"
_STRAY_AGE_NS = 60 * 10**9
TOUCH_EVERY_NS = 60 * 10**9
"""Reads rewrite a file's atime at most this often: a hint for other processes' eviction, not a log."""


class Sig(NamedTuple):
    """What must be unchanged for a file this process verified to still count as verified."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Sig:
        """The signature of a stat result."""
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def _try_lock(path: Path) -> int | None:
    """Open and exclusively flock `path` without blocking; the fd, or None if someone holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def clean_dead_temp(tmp_root: Path) -> int:
    """Remove temp directories whose owner died (lock not held); returns how many were removed."""
    removed = 0
    now = time.time_ns()
    for entry in os.scandir(tmp_root):
        path = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False):
            # Only temp dirs belong here; a stray file is garbage once it is clearly not being created.
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime_ns > _STRAY_AGE_NS:
                    path.unlink()
                    removed += 1
            continue
        lock = path / _LOCK
        fd = _try_lock(lock)
        if fd is None:
            # Held (live owner), or no lock file yet: an owner between mkdir and lock creation, or a crash
            # right there. Only the latter gets old.
            if lock.exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime_ns <= _STRAY_AGE_NS:
                    continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class TempArea:
    """The temp directory of one DiskTier instance, locked for as long as the instance is open."""

    def __init__(self, tmp_root: Path) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        # Lock before the directory gets its visible name, so no cleaner ever sees it unlocked while we live.
        staging = tmp_root / f".new-{name}"
        staging.mkdir(parents=True)
        self._fd: int | None = os.open(staging / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = tmp_root / name
        os.rename(staging, self.path)

    def release(self) -> None:
        """Remove the directory and drop the lock (idempotent)."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


def _load_sync_file_range():  # noqa: ANN202 - a ctypes function or None
    """libc's sync_file_range (Linux only; Python's os module does not expose it)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start (not wait for) writing `length` bytes at `offset` to the device; a no-op where unsupported.

    Only a hint: durability still comes from the fsync in `publish`, so a failure here is ignored.
    """
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class TempWriter:
    """One temp file being filled. A lock serialises fd use so `abort` never closes it under a write."""

    def __init__(self, area: TempArea) -> None:
        self._lock = threading.Lock()
        fd, name = tempfile.mkstemp(dir=area.path, prefix="w.")
        self.fd: int | None = fd
        self.path = Path(name)
        self.written = 0
        self._moved = False  # renamed into place: nothing left to remove

    def write(self, chunks: list[bytes], verifier: Verifier | None) -> None:
        """Hash (if a verifier is given) and write `chunks`, then start their writeback; raises
        IntegrityError before writing excess."""
        with self._lock:
            if self.fd is None:
                raise OSError(errno.EBADF, "temp file already closed")
            start = self.written
            for chunk in chunks:
                if verifier is not None:
                    verifier.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view) :]
                self.written += len(chunk)
            start_writeback(self.fd, start, self.written - start)

    def publish(self, final: Path | str) -> Sig:
        """fsync, then rename onto `final` (creating its directory if someone removed it)."""
        with self._lock:
            if self.fd is None:
                raise OSError(errno.EBADF, "temp file already closed")
            os.fsync(self.fd)
            sig = Sig.of(os.fstat(self.fd))
            os.close(self.fd)
            self.fd = None
            try:
                os.replace(self.path, final)
            except FileNotFoundError:
                if not self.path.exists():
                    raise
                Path(final).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path, final)
            self._moved = True
            return sig

    def abort(self) -> None:
        """Close and remove the temp file; safe to call twice and after `publish`."""
        with self._lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            if not self._moved:
                self.path.unlink(missing_ok=True)


def unlink_if_same(path: Path, ino: int) -> bool:
    """Remove `path` only if it is still the inode we judged (another process may have replaced it)."""
    try:
        if os.stat(path).st_ino != ino:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def read_small(path: Path, digest: Digest) -> tuple[os.stat_result, bytes, bool] | None:
    """Open, read whole and hash a small blob; None if absent. Also bumps a stale atime (blocking)."""
    opened = _open_with_stat(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        data = os.pread(fd, digest.size + 1, 0) if st.st_size == digest.size else b""
        hasher = new_hasher(digest.function)
        hasher.update(data)
        ok = len(data) == digest.size and hasher.hexdigest() == digest.hex
        if ok:
            bump_atime(fd, st)
        return st, data, ok
    finally:
        os.close(fd)


def open_large(path: Path) -> tuple[int, os.stat_result] | None:
    """Open a blob file for streaming: (fd, stat), or None if absent. Bumps a stale atime (blocking)."""
    opened = _open_with_stat(path)
    if opened is not None:
        try:
            bump_atime(*opened)
        except BaseException:
            os.close(opened[0])
            raise
    return opened


def _open_with_stat(path: Path) -> tuple[int, os.stat_result] | None:
    """Open read-only and fstat: (fd, stat), or None if the file is absent. The caller closes the fd."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def bump_atime(fd: int, st: os.stat_result) -> None:
    """Record a read in the file's atime (mtime kept: it is part of `Sig`), at most once a minute."""
    now = time.time_ns()
    if now - st.st_atime_ns > TOUCH_EVERY_NS:
        with contextlib.suppress(OSError):  # only a hint for other processes' eviction; keep mtime intact
            os.utime(fd, ns=(now, st.st_mtime_ns))


def exists_all(paths: list[str]) -> list[bool]:
    """One existence check per path, no body read: what `find_missing` needs.

    `access(F_OK)` mapped in C: no stat result to build, no exception per absent file (≈2x a stat loop).
    Sizes need no check here: they are in the names, and a visible name was published only after fsync.
    """
    return list(map(os.access, paths, itertools.repeat(os.F_OK)))


def put_small(area: TempArea, final: str, digest: Digest, data: bytes) -> Sig | None:
    """Verify `data`, then publish it at `final` unless a file is already there (blocking, one call).

    Returns the new file's signature, or None if the blob was already stored. Raises IntegrityError before
    anything is created when the bytes do not match `digest`.
    """
    verifier = Verifier(digest)
    verifier.update(data)
    verifier.check()
    if os.access(final, os.F_OK):
        return None
    writer = TempWriter(area)
    try:
        writer.write([data], None)
        return writer.publish(final)
    finally:
        writer.abort()


def read_file(path: Path) -> tuple[bytes, int]:
    """A whole small file (a KV record) and its inode."""
    with open(path, "rb") as handle:
        return handle.read(), os.fstat(handle.fileno()).st_ino
