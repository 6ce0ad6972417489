"""The workspace scan and its stat cache (`.mic/index`): `mic status` re-hashes only files whose stat changed.

The index maps each path to (size, mtime_ns, inode, content hash, mode) as last seen on disk, plus the (hash,
mode, size) the base tree holds for it (None for a file not in the base). A file whose size, mtime, inode and mode
match its entry is not read again. Linux file timestamps are coarse (a few ms), so when the index is saved, every
entry whose mtime is within `RACY_NS` of that moment is "smudged" (mtime -1) and re-hashed next time: a change
made in the same clock tick as our hash cannot hide behind an unchanged mtime. This is git's racy-index rule, and
like git it lets a fresh checkout trust every file written more than `RACY_NS` before the index was saved.

The file is one `marshal`led tuple written with temp + rename (layout in `Index`). `mic status` on an unchanged
tree decodes only the stat keys (path → (mtime, size, inode, mode)) and the changes against the base; the full
entries are decoded only when some file's stat changed, and a save after a small change writes a delta.
"""

from __future__ import annotations

import marshal
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IGNORED", "Index", "ScanResult", "file_mode", "hash_path", "scan"]

IGNORED = frozenset({".mic", ".git"})
RACY_NS = 100_000_000
_VERSION = 4
_MAGIC = b"MICI"
_HEADER = struct.Struct("<BxxxQQQ")  # version, then the byte lengths of the three parts
_FORK_MIN = 20_000  # cached files below which a second walker process costs more than it saves
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# entry = (size, mtime_ns, ino, cur_hash, cur_mode, base_hash | None, base_mode, base_size)
Entry = tuple[int, int, int, bytes, int, bytes | None, int, int]
Change = tuple[str, bytes | None, int, int]


def file_mode(st: os.stat_result) -> int:
    """0 regular, 1 executable, 2 symlink (the FileEntry modes)."""
    if stat.S_ISLNK(st.st_mode):
        return 2
    return 1 if st.st_mode & stat.S_IXUSR else 0


def hash_path(path: str | Path, mode: int) -> bytes:
    """BLAKE3 of a file's content (a symlink's content is its target)."""
    import blake3  # not needed by a scan that finds nothing new: keep it off `mic status`'s start-up

    if mode == 2:
        return blake3.blake3(os.fsencode(os.readlink(path))).digest()
    hasher = blake3.blake3()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.digest()


def _key(e: Entry) -> tuple[int, int, int, int]:
    return (e[1], e[0], e[2], e[4])


def _change(e: Entry) -> Change | None:
    if e[5] is None:
        return ("added", e[3], e[4], e[0])
    if e[3] != e[5] or e[4] != e[6]:
        return ("modified", e[3], e[4], e[0])
    return None


def _summaries(entries: dict[str, Entry]) -> tuple[dict[str, tuple[int, int, int, int]], dict[str, Change]]:
    """(path → stat key, path → change against the base) for every entry."""
    keys = {rel: (e[1], e[0], e[2], e[4]) for rel, e in entries.items()}
    changes: dict[str, Change] = {}
    for rel, e in entries.items():
        if e[5] is None:
            changes[rel] = ("added", e[3], e[4], e[0])
        elif e[3] != e[5] or e[4] != e[6]:
            changes[rel] = ("modified", e[3], e[4], e[0])
    return keys, changes


class _Entries(dict):  # type: ignore[type-arg]
    """The entries, remembering which paths were written since the last sync (so a save can be a small delta)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.touched: set[str] = set()
        self.all_touched = False

    def __setitem__(self, rel: str, e: Entry) -> None:
        self.touched.add(rel)
        super().__setitem__(rel, e)

    def __delitem__(self, rel: str) -> None:
        self.touched.add(rel)
        super().__delitem__(rel)

    def pop(self, rel: str, *default: object) -> object:
        self.touched.add(rel)
        return super().pop(rel, *default)

    def setdefault(self, rel: str, e: object = None) -> object:
        self.touched.add(rel)
        return super().setdefault(rel, e)

    def update(self, *args: object, **kwargs: object) -> None:
        self.all_touched = True
        super().update(*args, **kwargs)

    def __ior__(self, other: object) -> _Entries:
        self.all_touched = True
        return super().__ior__(other)  # type: ignore[no-any-return]

    def popitem(self) -> tuple[str, Entry]:
        self.all_touched = True
        return super().popitem()

    def clear(self) -> None:
        self.all_touched = True
        super().clear()


class Index:
    """The stat cache. `entries` (decoded on first use) is mutated in place and saved with `save()`.

    On disk: (version, stat-key blob, entries blob, delta, changes). The two blobs are nested `marshal` data
    written by the last full save; `delta` holds the entries written since (None for a removed path), so a land
    that changed one file rewrites the blobs' bytes as they are instead of re-encoding 100k entries.
    """

    def __init__(self, path: Path, entries: dict[str, Entry] | None = None) -> None:
        self.path = path
        self._entries = None if entries is None else _Entries(entries)
        self._keys_blob: bytes | memoryview | None = None  # as read (a view of the file's bytes) or last written
        self._entries_blob: bytes | memoryview | None = None
        self._delta: set[str] = set()  # paths whose entry differs from the blobs
        self._pending_delta: dict[str, Entry] = {}  # the delta read from disk, until the entries are decoded
        # path → stat key and path → change, in step with the entries as of the last `_sync`
        self._keys: dict[str, tuple[int, int, int, int]] | None = {} if entries is None else None
        self._changes: dict[str, Change] = {}
        self.outdated = False  # loaded from an older format: worth saving even when no file changed

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            loaded: dict[str, Entry] = {}
            if self._entries_blob is not None:
                try:
                    loaded = marshal.loads(self._entries_blob)
                except (EOFError, ValueError, TypeError):
                    loaded = None
                if not isinstance(loaded, dict):  # damaged: start over (a full save, everything re-hashed)
                    self._keys, self._changes, self._entries_blob, loaded = None, {}, None, {}
                for rel in self._delta:
                    loaded.pop(rel, None)
                loaded.update(self._pending_delta)
            self._entries = _Entries(loaded)
            self._pending_delta = {}
        return self._entries

    def _sync(self) -> tuple[dict[str, tuple[int, int, int, int]], dict[str, Change]]:
        """Bring the stat keys and changes up to date with the entries; return them."""
        e = self._entries
        if self._keys is None or (e is not None and e.all_touched):
            e = self.entries
            self._keys, self._changes = _summaries(e)
            self._keys_blob = self._entries_blob = None  # nothing to write a delta against: next save is full
            e.touched.clear()
            e.all_touched = False
        elif e is not None and e.touched:
            keys, changes = self._keys, self._changes
            for rel in e.touched:
                x = dict.get(e, rel)
                if x is None:
                    keys.pop(rel, None)
                    changes.pop(rel, None)
                    continue
                keys[rel] = _key(x)
                c = _change(x)
                if c is None:
                    changes.pop(rel, None)
                else:
                    changes[rel] = c
            self._delta |= e.touched
            e.touched.clear()
        return self._keys, self._changes

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            raw = path.read_bytes()
            if raw[:4] == _MAGIC:  # header, then the key blob, (delta, changes), the entry blob: no copies made
                version, n_keys, n_meta, n_entries = _HEADER.unpack_from(raw, 4)
                view = memoryview(raw)[4 + _HEADER.size :]
                if version != _VERSION or len(view) != n_keys + n_meta + n_entries:
                    return cls(path)
                keys_blob, entries_blob = view[:n_keys], view[n_keys + n_meta :]
                delta, changes = marshal.loads(view[n_keys : n_keys + n_meta])
                data: tuple = (3, keys_blob, entries_blob, delta, changes)
                outdated = False
            else:
                data, outdated = marshal.loads(raw), True
            if isinstance(data, tuple) and len(data) == 2 and data[0] == 1 and isinstance(data[1], dict):
                index = cls(path, data[1])  # the version-1 format: just the entries
                index.outdated = True
                return index
            if isinstance(data, tuple) and len(data) == 4 and data[0] == 2:
                index = cls(path, marshal.loads(data[3]))  # version 2: (2, keys, changes, entries blob)
                index.outdated = True
                return index
            _, keys_blob, entries_blob, delta, changes = data  # version 3: this tuple, marshalled
            keys = marshal.loads(keys_blob)
            if not (data[0] == 3 and isinstance(keys, dict) and isinstance(delta, dict) and isinstance(changes, dict)):
                return cls(path)
        except FileNotFoundError:
            return cls(path)
        except (EOFError, ValueError, TypeError, struct.error):
            return cls(path)  # a damaged cache only costs re-hashing; the base is rebuilt by `mic status`
        for rel, e in delta.items():
            if e is None:
                keys.pop(rel, None)
            else:
                keys[rel] = _key(e)
        index = cls(path)
        index._keys, index._changes = keys, changes
        index._keys_blob, index._entries_blob = keys_blob, entries_blob
        index._delta = set(delta)
        index._pending_delta = {rel: e for rel, e in delta.items() if e is not None}
        index.outdated = outdated
        return index

    def save(self) -> None:
        if self._entries is None and not self.outdated:
            return  # never decoded, so never changed: the file on disk is current
        e = self.entries
        # only entries written since the last full save can be racy (older ones were smudged when saved): those
        # not yet synced, and the delta
        racy = e if (self._keys is None or e.all_touched) else (e.touched | self._delta)
        cutoff = time.time_ns() - RACY_NS
        for rel in [rel for rel in racy if rel in e and dict.__getitem__(e, rel)[1] >= cutoff]:
            x = dict.__getitem__(e, rel)
            e[rel] = (x[0], -1, *x[2:])
        keys, changes = self._sync()
        if self._entries_blob is None or self._keys_blob is None or len(self._delta) > max(1000, len(e) // 50):
            self._keys_blob, self._entries_blob = marshal.dumps(keys), marshal.dumps(dict(e))
            self._delta = set()
        meta = marshal.dumps(({rel: dict.get(e, rel) for rel in self._delta}, changes))
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(_MAGIC + _HEADER.pack(_VERSION, len(self._keys_blob), len(meta), len(self._entries_blob)))
            for part in (self._keys_blob, meta, self._entries_blob):
                fh.write(part)
        os.replace(tmp, self.path)
        self.outdated = False

    def set_base(self, rel: str, full: Path, h: bytes, mode: int, size: int) -> None:
        """Record that `rel` now holds the base content (after checkout, land or update wrote or kept it)."""
        st = full.lstat()
        self.entries[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, h, mode, h, mode, size)

    def set_base_unverified(self, rel: str, base: tuple[bytes, int, int] | None) -> None:
        """Record `rel`'s base (hash, mode, size) without vouching for the file: the next scan re-hashes it."""
        e = self.entries.get(rel)
        if base is None and (e is None or e[5] is None):
            return
        size, ino, cur, mode = (e[0], e[2], e[3], e[4]) if e is not None else (-1, -1, b"", 0)
        b_hash, b_mode, b_size = base if base is not None else (None, 0, 0)
        self.entries[rel] = (size, -1, ino, cur, mode, b_hash, b_mode, b_size)


@dataclass
class ScanResult:
    """Workspace changes against the base: path → (kind, hash, mode, size); hash is None when deleted."""

    changes: dict[str, Change]
    rehashed: int


Suspect = tuple[str, str, int, int, int, int]  # (rel, absolute path, size, mtime_ns, inode, mode)


def _walk_dir(prefix: str, directory: str, keys: dict, seen: list[str], suspects: list[Suspect]) -> list:
    """Scan one directory: append its files to `seen`, those whose stat key differs to `suspects`; return subdirs.

    This is the whole per-file cost of `mic status`, so it is flat: `scandir` on a directory fd (each `lstat` is
    then an `fstatat` on a name, no path walk in the kernel), one tuple compare per unchanged file.
    """
    get = keys.get
    subdirs = []
    fd = os.open(directory, _DIR_FLAGS)
    try:
        with os.scandir(fd) as it:
            for dirent in it:
                name = dirent.name
                if dirent.is_dir(follow_symlinks=False):
                    if name not in IGNORED:
                        subdirs.append((prefix + name + "/", directory + "/" + name))
                    continue
                st = dirent.stat(follow_symlinks=False)
                kind = st.st_mode & 0o170000
                if kind == 0o100000:  # regular file
                    mode = 1 if st.st_mode & 0o100 else 0
                elif kind == 0o120000:  # symlink
                    mode = 2
                else:
                    continue  # sockets, fifos, devices are not content
                rel = prefix + name
                seen.append(rel)
                if get(rel) != (st.st_mtime_ns, st.st_size, st.st_ino, mode):
                    suspects.append((rel, directory + "/" + name, st.st_size, st.st_mtime_ns, st.st_ino, mode))
    finally:
        os.close(fd)
    return subdirs


def _walk_all(stack: list, keys: dict, seen: list[str], suspects: list[Suspect]) -> None:
    while stack:
        stack.extend(_walk_dir(*stack.pop(), keys, seen, suspects))


def _walk(root: str, keys: dict) -> tuple[list[str], list[Suspect]]:
    """Walk the tree; on a large tree a forked child walks every other top-level directory and sends back
    (seen, suspects). Threads measured slower (each `lstat` is too short for the GIL hand-off to pay). If the
    child fails in any way the parent walks its half itself, so errors surface exactly as without it.
    """
    seen: list[str] = []
    suspects: list[Suspect] = []
    subdirs = _walk_dir("", root, keys, seen, suspects)
    if len(keys) < _FORK_MIN or len(subdirs) < 2 or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        _walk_all(subdirs, keys, seen, suspects)
        return seen, suspects
    theirs, ours = subdirs[1::2], subdirs[0::2]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: walk, report, exit without running any of the parent's cleanup
        code = 1
        try:
            os.close(r)
            child_seen: list[str] = []
            child_suspects: list[Suspect] = []
            _walk_all(theirs, keys, child_seen, child_suspects)
            view = memoryview(marshal.dumps((child_seen, child_suspects)))
            while view:
                view = view[os.write(w, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        _walk_all(ours, keys, seen, suspects)
        chunks = []
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    try:
        child_seen, child_suspects = marshal.loads(b"".join(chunks)) if status == 0 else (None, None)
    except (EOFError, ValueError, TypeError):
        child_seen = child_suspects = None
    if not isinstance(child_seen, list) or not isinstance(child_suspects, list):
        _walk_all(theirs, keys, seen, suspects)  # the child failed: do its half here
    else:
        seen += child_seen
        suspects += child_suspects
    return seen, suspects


def scan(root: Path, index: Index) -> ScanResult:
    """Compare the files under `root` with the base recorded in `index`; update the index's stat data.

    Files whose stat key matches the cache cost one `lstat` and a dict lookup; the full entries are decoded and
    touched only for the rest (new, changed, smudged or deleted files).
    """
    keys, changes = index._sync()
    seen, suspects = _walk(os.fspath(root), keys)
    changes = dict(changes)
    if not suspects and len(seen) == len(keys):
        return ScanResult(changes, 0)  # every cached file is there, unchanged: nothing to decode or save
    entries = index.entries
    if index._keys is None:  # the stored entries were damaged: compare against what could be recovered
        return scan(root, index)
    for rel, full, size, mtime_ns, ino, mode in suspects:
        e = entries.get(rel)
        base = (e[5], e[6], e[7]) if e is not None else (None, 0, 0)
        cur = hash_path(full, mode)
        entries[rel] = (size, mtime_ns, ino, cur, mode, *base)
        changes.pop(rel, None)
        if base[0] is None:
            changes[rel] = ("added", cur, mode, size)
        elif cur != base[0] or mode != base[1]:
            changes[rel] = ("modified", cur, mode, size)
    rehashed = len(suspects)
    if len(seen) != len(entries):  # new files were added to `entries` as seen, so a gap means deletions
        present = set(seen)
        for rel in [p for p in entries if p not in present]:
            if entries[rel][5] is not None:
                changes[rel] = ("deleted", None, 0, 0)
            else:
                del entries[rel]  # an untracked file that went away
                changes.pop(rel, None)
                rehashed += 1
    return ScanResult(changes, rehashed)
