"""Durable atomic writes: a reader sees the old file, no file, or the whole new one, and once a write returns
a power cut cannot take it back.

One mechanism for every small file mic and micd replace whole (workspace state, stat cache, watcher pid, the
session state dir's files, upload journal entries, the disk index snapshot, local object store objects): a
temp file created exclusively beside the target, written, fsynced, renamed over the target (or linked, for a
create-only write), then the target's directory fsynced. Without the file's fsync a crash can leave the new
name on empty bytes; without the directory's, the rename itself can be lost.

Streamed writes that fill a temp file over many calls and publish it themselves (CAS blobs in the disk tier,
files checked out into a workspace) are not this; checkouts share only `create_temp`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["create_temp", "fsync_dir", "write_atomic"]

Data = str | bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
"""Text (written as UTF-8), bytes, or byte parts written one after the other (never joined in memory)."""


def create_temp(
    path: Path, *, mode: int, tmp_dir: Path | None = None, suffix: str = ".tmp"
) -> tuple[int, Path]:
    """A new empty file to become `path`: its fd, open for writing, and its name.

    Created exclusively (O_EXCL, which follows no symlink planted at its name) under the unpredictable name
    `.<name>.<random><suffix>`, beside `path` or in `tmp_dir` (same filesystem), with exactly `mode` whatever
    the umask. The caller closes the fd and removes the file unless it moved it into place."""
    short = path.name.encode()[:64].decode(errors="ignore")  # a name near the 255-byte limit still gets one
    fd, name = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{short}.", suffix=suffix)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def write_atomic(
    path: str | os.PathLike[str],
    data: Data,
    *,
    mode: int = 0o600,
    tmp_dir: Path | None = None,
    exclusive: bool = False,
) -> None:
    """Replace `path` with `data`, durably: temp file, fsync, rename, fsync of `path`'s directory. Blocking.

    `mode` is the new file's exact permissions (private by default). `tmp_dir` holds the temp file instead of
    `path`'s directory, for a directory whose listing must show only finished files or whose strays its owner
    cleans; it must be on the same filesystem. `exclusive` makes it create-only: the temp file is linked to
    `path`, which raises FileExistsError if anything is there, so exactly one of racing creators wins."""
    path = Path(path)
    fd, tmp = create_temp(path, mode=mode, tmp_dir=tmp_dir)
    try:
        try:
            for part in _parts(data):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if exclusive:
        tmp.unlink()
    fsync_dir(path.parent)


def _parts(data: Data) -> Sequence[bytes | bytearray | memoryview]:
    if isinstance(data, str):
        return [data.encode()]
    if isinstance(data, bytes | bytearray | memoryview):
        return [data]
    return data


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the entries just created, linked or renamed in `directory` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
