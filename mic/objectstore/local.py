"""ObjectStore on a local directory, safe across processes (the embedded default).

Crash and race safety comes from the file system, not from a daemon:
- `put_if_absent` writes a private temp file, fsyncs it, then `link()`s it to the key's path (`write_atomic`,
  exclusive). `link` fails with EEXIST if anything is there, so exactly one of N racing creators wins, and a
  reader never sees a partial file.
- `put_if_match` takes an exclusive `flock` on a per-key lock file, re-reads the object, compares its ETag, and
  publishes the new bytes with temp + fsync + `rename` (`write_atomic`) while still holding the lock. Every
  writer of an existing key (`put_if_match`, `delete`) holds that lock, so the read-compare-replace is atomic.
- Durability: an object's bytes are fsynced before it is linked, and the directory it is linked into is
  fsynced before the write returns (and each directory's entry in its parent, once per process). Without the
  directory fsync a power cut could keep `head` yet lose `landing/<n>` or a tree node it refers to.
- The ETag is the BLAKE3 of the bytes (truncated to 128 bits): it changes whenever the content does, and
  compare-and-swap of identical bytes is harmless.
Blocking work runs in `asyncio.to_thread`. Temp and lock files live under `.tmp/` and `.locks/`, which no valid key
can name (key segments never start with a dot).
"""

from __future__ import annotations

import asyncio
import errno
import os
from contextlib import AbstractContextManager
from pathlib import Path

import blake3

from mic.errors import PreconditionFailed, StoreUnavailable
from mic.objectstore import Obj, validate_key
from mickernel.atomic import fsync_dir, write_atomic
from mickernel.locks import hold_lock

__all__ = ["LocalObjectStore", "etag_of"]


def etag_of(data: bytes) -> str:
    """The ETag of `data` in a local store."""
    return blake3.blake3(data).hexdigest()[:32]


class LocalObjectStore:
    """An ObjectStore rooted at `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._made: set[Path] = set()  # directories known to exist (and durable): skips syscalls per write
        self._durable: set[Path] = set()  # directories whose entry in their parent this process fsynced

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    # -- blocking halves -------------------------------------------------------------------------------------

    def _publish(self, key: str, data: bytes, *, exclusive: bool) -> None:
        """Write `data` at `key` durably (`write_atomic`, the temp file under `.tmp/`): replacing what is there,
        or, `exclusive`, only if nothing is (FileExistsError otherwise)."""
        path = self._path(key)
        tmp_dir = self.root / ".tmp"
        try:
            self._mkdir(tmp_dir, durable=False)  # temp files only pass through
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the local store at {self.root}: {exc.strerror}; set MIC_STORE_URL (or --store) "
                "to a writable file:///path"
            ) from exc
        self._mkdir(path.parent)
        try:
            write_atomic(path, data, mode=0o644, tmp_dir=tmp_dir, exclusive=exclusive)
        except FileNotFoundError:  # a directory went away under our cache of it
            self._made.difference_update((tmp_dir, path.parent))
            self._mkdir(tmp_dir, durable=False)
            self._mkdir(path.parent)
            write_atomic(path, data, mode=0o644, tmp_dir=tmp_dir, exclusive=exclusive)

    def _mkdir(self, directory: Path, *, durable: bool = True) -> None:
        """Create `directory` if needed; when `durable`, also make its path from the store's root survive a
        power cut (fsync each parent once per process: another process may have created it and not synced yet)."""
        if directory not in self._made:
            directory.mkdir(parents=True, exist_ok=True)
            if durable:
                d = directory
                while d != self.root and d not in self._durable:
                    fsync_dir(d.parent)
                    self._durable.add(d)
                    d = d.parent
            self._made.add(directory)

    def _get(self, key: str) -> Obj | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Obj(data, etag_of(data))

    def _put_if_absent(self, key: str, data: bytes) -> str:
        try:
            self._publish(key, data, exclusive=True)
        except FileExistsError:
            raise PreconditionFailed(key, "already exists") from None
        return etag_of(data)

    def _lock(self, key: str) -> AbstractContextManager[bool]:
        """Hold `key`'s lock (waiting for it): every writer of an existing key does."""
        lock_dir = self.root / ".locks"
        self._mkdir(lock_dir, durable=False)
        return hold_lock(lock_dir / blake3.blake3(key.encode()).hexdigest()[:24], mode=0o644)

    def _put_if_match(self, key: str, data: bytes, etag: str) -> str:
        validate_key(key)  # before its lock file is made
        with self._lock(key):
            current = self._get(key)
            if current is None:
                raise PreconditionFailed(key, f"expected ETag {etag}, but the object does not exist")
            if current.etag != etag:
                raise PreconditionFailed(key, f"expected ETag {etag}, got {current.etag}")
            self._publish(key, data, exclusive=False)
        return etag_of(data)

    def _list(self, prefix: str) -> list[str]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = ""
            for name in filenames:
                key = f"{rel}/{name}" if rel else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        with self._lock(key):
            try:
                path.unlink(missing_ok=True)
            except NotADirectoryError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    # -- async API -------------------------------------------------------------------------------------------

    async def get(self, key: str) -> Obj | None:
        return await asyncio.to_thread(self._get, key)

    async def put_if_absent(self, key: str, data: bytes) -> str:
        return await asyncio.to_thread(self._put_if_absent, key, data)

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        return await asyncio.to_thread(self._put_if_match, key, data, etag)

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def close(self) -> None:
        return None
