"""The workspace scan and its stat cache (`.mic/index`): `mic status` re-hashes only files whose stat changed.

The index maps each path to (size, mtime_ns, inode, content hash, mode, ctime_ns) as last seen on disk, plus the
(hash, mode, size) the base tree holds for it (None for a file not in the base). A file whose size, mtime, inode,
mode and ctime match its entry is not read again (ctime as in git: a rewrite restoring mtime cannot restore it). Linux file timestamps are coarse (a few ms), so when the index is saved, every
entry whose mtime is within `RACY_NS` of that moment is "smudged" (mtime -1) and re-hashed next time: a change
made in the same clock tick as our hash cannot hide behind an unchanged mtime. This is git's racy-index rule, and
like git it lets a fresh checkout trust every file written more than `RACY_NS` before the index was saved. A
file a scan hashes is also judged against the scan's start, so saving long after the scan (as `mic land` does)
cannot widen the window.

The file is one `marshal`led tuple written with temp + fsync + rename (layout in `Index`). `mic status` on an
unchanged tree decodes only the stat keys (path → (mtime, size, inode, mode, ctime)) and the changes against the base; the full
entries are decoded only when some file's stat changed, and a save after a small change writes a delta.

With the workspace watcher (`mic.watch`) the index also stores the watcher token it is valid for, and `scan_paths`
looks only at the paths the watcher reports changed since that token (decoding neither part when none did).
"""

from __future__ import annotations

import marshal
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from mic.paths import TEMP_SUFFIX, check_path, skipped, skipped_names
from mickernel.atomic import write_atomic

__all__ = [
    "Index", "ScanResult", "Token", "file_mode", "hash_path", "scan", "scan_paths", "stat_key",
    "stat_key_of",
]

RACY_NS = 100_000_000
_VERSION = 6  # 6 adds ctime to the stat key; 5 added the watcher token; 4 and 5 are read (see `_upgraded`)
MAGIC = b"MICI"
_HEADER = struct.Struct("<BxxxQQQ")  # version, then the byte lengths of the three parts
_FORK_MIN = 20_000  # cached files below which a second walker process costs more than it saves
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# entry = (size, mtime_ns, ino, cur_hash | None, cur_mode, base_hash | None, base_mode, base_size, ctime_ns);
# ctime is in the stat key (as in git) because a rewrite that restores mtime and size (cp -p, rsync -t, tar x,
# touch -r) cannot restore ctime. -1 in mtime or ctime never matches a stat: re-hash next time. cur_hash is
# None for a base file found gone (see `_record_gone`): a scan of only the watcher's paths must still report it
Entry = tuple[int, int, int, bytes | None, int, bytes | None, int, int, int]  # ... base_size, ctime_ns
Change = tuple[str, bytes | None, int, int]
Key = tuple[int, int, int, int, int]  # the stat key: (mtime_ns, size, inode, mode, ctime_ns)
Token = tuple[str, int]  # (watcher generation, sequence number): see mic.watch


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


def _key(e: Entry) -> Key:
    return (e[1], e[0], e[2], e[4], e[8])


def stat_key(e: Entry) -> Key:
    """The stat key an entry was recorded with (compare with `stat_key_of` of a fresh stat)."""
    return _key(e)


def stat_key_of(st: os.stat_result, mode: int) -> Key:
    """A file's stat key as the scan builds it (the walk inlines this for speed)."""
    return (st.st_mtime_ns, st.st_size, st.st_ino, mode, st.st_ctime_ns)


def _change(e: Entry) -> Change | None:
    if e[3] is None:
        return ("deleted", None, 0, 0)
    if e[5] is None:
        return ("added", e[3], e[4], e[0])
    if e[3] != e[5] or e[4] != e[6]:
        return ("modified", e[3], e[4], e[0])
    return None


def _summaries(entries: dict[str, Entry]) -> tuple[dict[str, Key], dict[str, Change]]:
    """(path → stat key, path → change against the base) for every entry."""
    keys = {rel: _key(e) for rel, e in entries.items()}
    changes: dict[str, Change] = {}
    for rel, e in entries.items():
        c = _change(e)
        if c is not None:
            changes[rel] = c
    return keys, changes


class _Entries(dict):
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

    # mypy wants an in-place operator's overloads to mirror `__or__`'s one for one (typeshed's own
    # `dict.__ior__` ignores the same check): the checker is too strict here, the operator is right
    def __ior__(self, other: Any) -> Self:  # type: ignore[misc]
        self.all_touched = True
        return super().__ior__(other)

    def popitem(self) -> tuple[str, Entry]:
        self.all_touched = True
        return super().popitem()

    def clear(self) -> None:
        self.all_touched = True
        super().clear()


class Index:
    """The stat cache. `entries` (decoded on first use) is mutated in place and saved with `save()`.

    On disk: a header, the stat-key blob, (delta, changes, token), the entries blob. The two blobs are nested
    `marshal` data written by the last full save; `delta` holds the entries written since (None for a removed
    path), so a land that changed one file rewrites the blobs' bytes as they are instead of re-encoding 100k
    entries. Both blobs are decoded only when needed. `token` is the watcher token this index is valid for: every
    change on disk since the token is either reflected here or reported by that watcher (None: no watcher).
    """

    def __init__(self, path: Path, entries: dict[str, Entry] | None = None) -> None:
        self.path = path
        self._entries = None if entries is None else _Entries(entries)
        self._keys_blob: bytes | memoryview | None = None  # as read (a view of the file's bytes) or last written
        self._entries_blob: bytes | memoryview | None = None
        self._delta: set[str] = set()  # paths whose entry differs from the blobs
        self._pending_delta: dict[str, Entry] = {}  # the delta read from disk, until the entries are decoded
        # path → stat key and path → change, in step with the entries as of the last `_sync`
        self._keys: dict[str, Key] | None = {} if entries is None else None
        self._keys_lazy = False  # `_keys` is still to be decoded from `_keys_blob` (plus `_delta`)
        self._changes: dict[str, Change] = {}
        self.outdated = False  # loaded from an older format: worth saving even when no file changed
        # loaded from nothing (no file, or a damaged one): it no longer knows the base, which only the base tree
        # can restore (`mic.vcs.restore_index_base`); the caller clears this once it has
        self.lost = False
        self.token: Token | None = None
        self.saved_token: Token | None = None  # the token on disk

    @property
    def entries(self) -> dict[str, Entry]:
        return self._decoded()

    def _decoded(self) -> _Entries:
        """`entries` as the `_Entries` it is (decoded on first use)."""
        if self._entries is None:
            loaded: dict[str, Entry] = {}
            if self._entries_blob is not None:
                try:
                    decoded = marshal.loads(self._entries_blob)
                except (EOFError, ValueError, TypeError):
                    decoded = None
                if isinstance(decoded, dict):
                    loaded = decoded
                else:  # damaged: start over (a full save, everything re-hashed)
                    self._keys, self._changes, self._entries_blob = None, {}, None
                    self._keys_lazy, self.token, self.lost = False, None, True
                for rel in self._delta:
                    loaded.pop(rel, None)
                loaded.update(self._pending_delta)
            self._entries = _Entries(loaded)
            self._pending_delta = {}
        return self._entries

    def _decode_keys(self) -> None:
        assert self._keys_blob is not None  # `_keys_lazy` is only set, and stays set, with the blob there
        self._keys_lazy = False
        try:
            keys = marshal.loads(self._keys_blob)
        except (EOFError, ValueError, TypeError):
            keys = None
        if not isinstance(keys, dict):  # damaged: `_sync` rebuilds them from the entries
            self._keys = self._keys_blob = None
            return
        for rel in self._delta:
            e = dict.get(self._entries, rel) if self._entries is not None else self._pending_delta.get(rel)
            if e is None:
                keys.pop(rel, None)
            else:
                keys[rel] = _key(e)
        self._keys = keys

    def _sync(self, keys_needed: bool = True) -> tuple[dict[str, Key], dict[str, Change]]:
        """Bring the stat keys (unless not `keys_needed` and not yet decoded) and changes up to date with the
        entries; return them."""
        if keys_needed and self._keys_lazy:
            self._decode_keys()
        e = self._entries
        if self._keys is None or (e is not None and e.all_touched):
            self._keys_lazy = False
            e = self._decoded()
            self._keys, self._changes = _summaries(e)
            self._keys_blob = self._entries_blob = None  # nothing to write a delta against: next save is full
            e.touched.clear()
            e.all_touched = False
        elif e is not None and e.touched:
            keys, changes = (None if self._keys_lazy else self._keys), self._changes
            for rel in e.touched:
                x = dict.get(e, rel)
                if x is None:
                    if keys is not None:
                        keys.pop(rel, None)
                    changes.pop(rel, None)
                    continue
                if keys is not None:
                    keys[rel] = _key(x)
                c = _change(x)
                if c is None:
                    changes.pop(rel, None)
                else:
                    changes[rel] = c
            self._delta |= e.touched
            e.touched.clear()
        return self._keys, self._changes

    def changes(self) -> dict[str, Change]:
        """The changes against the base as the entries stand (decoding nothing that is not yet decoded)."""
        return self._sync(keys_needed=False)[1]

    @property
    def unsaved(self) -> bool:
        """Worth saving though no file was re-hashed: an older format, or a token of another watcher generation."""
        token, saved = self.token, self.saved_token
        return self.outdated or (token is not None and (saved is None or saved[0] != token[0]))

    def file_count(self) -> int:
        return len(self._sync()[0])

    @classmethod
    def load(cls, path: Path) -> Index:
        index = cls._load(path)
        if index._entries is None and index._entries_blob is None:  # nothing was read: see `lost`
            index.lost = True
        return index

    @classmethod
    def _load(cls, path: Path) -> Index:
        try:
            raw = path.read_bytes()
            if raw[:4] == MAGIC:  # header, key blob, (delta, changes[, token]), entry blob: no copies made
                version, n_keys, n_meta, n_entries = _HEADER.unpack_from(raw, 4)
                view = memoryview(raw)[4 + _HEADER.size :]
                if version not in (4, 5, _VERSION) or len(view) != n_keys + n_meta + n_entries:
                    return cls(path)
                keys_blob, entries_blob = view[:n_keys], view[n_keys + n_meta :]
                meta = marshal.loads(view[n_keys : n_keys + n_meta])
                delta, changes = meta[:2]
                token = meta[2] if version >= 5 else None
                if token is not None and not (
                    isinstance(token, tuple) and len(token) == 2
                    and isinstance(token[0], str) and isinstance(token[1], int)
                ):
                    return cls(path)
                index = cls._from_parts(path, keys_blob, entries_blob, delta, changes, token, outdated=False)
                return index if version == _VERSION else cls._upgraded(index)
            else:
                data = marshal.loads(raw)
            if isinstance(data, tuple) and len(data) == 2 and data[0] == 1 and isinstance(data[1], dict):
                return cls._upgraded(cls(path, data[1]))  # the version-1 format: just the entries
            if isinstance(data, tuple) and len(data) == 4 and data[0] == 2:
                return cls._upgraded(cls(path, marshal.loads(data[3])))  # version 2: (2, keys, changes, entries)
            _, keys_blob, entries_blob, delta, changes = data  # version 3: this tuple, marshalled
            if data[0] != 3:
                return cls(path)
            return cls._upgraded(cls._from_parts(path, keys_blob, entries_blob, delta, changes, None, outdated=True))
        except FileNotFoundError:
            return cls(path)
        except (EOFError, ValueError, TypeError, struct.error):
            return cls(path)  # damaged: `lost`, the caller rebuilds the base from the base tree

    @classmethod
    def _upgraded(cls, old: Index) -> Index:
        """`old`, read from a format before 6, with ctime -1 in every entry: its stat keys lack ctime, so each
        file is re-hashed once by the next scan. The bases (what the workspace is based on) are kept."""
        entries = {rel: (*e[:8], -1) for rel, e in old.entries.items()}
        index = cls(old.path, entries)
        index.outdated = True
        return index

    @classmethod
    def _from_parts(
        cls, path: Path, keys_blob: bytes | memoryview, entries_blob: bytes | memoryview, delta: object,
        changes: object, token: Token | None, *, outdated: bool,
    ) -> Index:
        if not (isinstance(delta, dict) and isinstance(changes, dict)):
            return cls(path)
        index = cls(path)
        index._keys_lazy, index._changes = True, changes
        index._keys_blob, index._entries_blob = keys_blob, entries_blob
        index._delta = set(delta)
        index._pending_delta = {rel: e for rel, e in delta.items() if e is not None}
        index.outdated = outdated
        index.token = index.saved_token = token
        return index

    def save(self) -> None:
        if self._entries is None and not self.outdated:
            if self.token == self.saved_token:
                return  # never decoded, so never changed: the file on disk is current
            if self._keys_blob is not None and self._entries_blob is not None:  # only the token moved on
                self._write({rel: self._pending_delta.get(rel) for rel in self._delta}, self._changes)
                return
        e = self._decoded()
        # only entries written since the last full save can be racy (older ones were smudged when saved): those
        # not yet synced, and the delta
        racy = e if (self._keys is None or e.all_touched) else (e.touched | self._delta)
        cutoff = time.time_ns() - RACY_NS
        for rel in [rel for rel in racy if rel in e and dict.__getitem__(e, rel)[1] >= cutoff]:
            x = dict.__getitem__(e, rel)
            e[rel] = (x[0], -1, *x[2:])
        keys, changes = self._sync(keys_needed=False)
        if self._entries_blob is None or self._keys_blob is None or len(self._delta) > max(1000, len(e) // 50):
            keys, changes = self._sync()
            self._keys_blob, self._entries_blob = marshal.dumps(keys), marshal.dumps(dict(e))
            self._delta = set()
        self._write({rel: dict.get(e, rel) for rel in self._delta}, changes)

    def _write(self, delta: dict[str, Entry | None], changes: dict[str, Change]) -> None:
        assert self._keys_blob is not None and self._entries_blob is not None
        meta = marshal.dumps((delta, changes, self.token))
        header = MAGIC + _HEADER.pack(_VERSION, len(self._keys_blob), len(meta), len(self._entries_blob))
        write_atomic(self.path, [header, self._keys_blob, meta, self._entries_blob], mode=0o644)
        self.outdated = False
        self.saved_token = self.token

    def set_base(self, rel: str, full: Path, h: bytes, mode: int, size: int) -> None:
        """Record that `rel` now holds the base content, just written by checkout or update.

        Only for a file mic itself has just written with that content: a fresh stat is paired with `h`."""
        st = full.lstat()
        self.entries[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, h, mode, h, mode, size, st.st_ctime_ns)

    def set_landed(self, rel: str, h: bytes, mode: int, size: int) -> None:
        """Record that the content a scan hashed for `rel` (hash `h`) is now the base, after it landed.

        The entry keeps the stat the scan took together with that hash. Why not a fresh `lstat`: the file may
        have been edited since the scan (a land takes seconds on S3), and a new stat paired with the old hash
        would make that edit invisible. An edit since the scan changes the stat, so the next scan re-hashes it."""
        e = self.entries.get(rel)
        if e is None or e[3] != h or e[4] != mode:  # not what the scan recorded: let the next scan decide
            self.set_base_unverified(rel, (h, mode, size))
            return
        self.entries[rel] = (*e[:5], h, mode, size, *e[8:])

    def set_base_unverified(self, rel: str, base: tuple[bytes, int, int] | None) -> None:
        """Record `rel`'s base (hash, mode, size) without vouching for the file: the next scan re-hashes it.

        Only a full scan looks at unreported files, so this also drops the watcher token."""
        self.token = None
        e = self.entries.get(rel)
        if base is None and (e is None or e[5] is None):
            return
        size, ino, cur, mode = (e[0], e[2], e[3], e[4]) if e is not None else (-1, -1, b"", 0)
        b_hash, b_mode, b_size = base if base is not None else (None, 0, 0)
        self.entries[rel] = (size, -1, ino, cur, mode, b_hash, b_mode, b_size, -1)


@dataclass
class ScanResult:
    """Workspace changes against the base: path → (kind, hash, mode, size); hash is None when deleted."""

    changes: dict[str, Change]
    rehashed: int


Suspect = tuple[str, str, int, int, int, int, int]  # (rel, absolute path, size, mtime_ns, inode, mode, ctime_ns)


class _Keys(Protocol):
    """What the walk looks stat keys up in: the stat-key dict, or `_EntryKeys`."""

    def get(self, rel: str, /) -> Key | None: ...


def _walk_dir(
    prefix: str, directory: str, keys: _Keys, seen: list[str], suspects: list[Suspect]
) -> list[tuple[str, str]]:
    """Scan one directory: append its files to `seen`, those whose stat key differs to `suspects`; return subdirs.

    This is the whole per-file cost of `mic status`, so it is flat: `scandir` on a directory fd (each `lstat` is
    then an `fstatat` on a name, no path walk in the kernel), one tuple compare per unchanged file.
    """
    get = keys.get
    skip = skipped_names(prefix)  # the root's `.mic`, and `.git` anywhere (see mic.paths)
    subdirs: list[tuple[str, str]] = []
    fd = os.open(directory, _DIR_FLAGS)
    try:
        with os.scandir(fd) as it:
            for dirent in it:
                name = dirent.name
                if name in skip or (name.endswith(TEMP_SUFFIX) and skipped(prefix, name)):  # and mic's temp files
                    continue
                if dirent.is_dir(follow_symlinks=False):
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
                if get(rel) != (st.st_mtime_ns, st.st_size, st.st_ino, mode, st.st_ctime_ns):  # `stat_key_of`
                    suspects.append(
                        (rel, directory + "/" + name, st.st_size, st.st_mtime_ns, st.st_ino, mode, st.st_ctime_ns)
                    )
    finally:
        os.close(fd)
    return subdirs


def _walk_all(stack: list[tuple[str, str]], keys: _Keys, seen: list[str], suspects: list[Suspect]) -> None:
    """Walk each (prefix, directory) on `stack` and everything below it."""
    while stack:
        prefix, directory = stack.pop()
        stack.extend(_walk_dir(prefix, directory, keys, seen, suspects))


def _walk(root: str, keys: dict[str, Key]) -> tuple[list[str], list[Suspect]]:
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
    their_seen: object
    their_suspects: object
    try:
        their_seen, their_suspects = marshal.loads(b"".join(chunks)) if status == 0 else (None, None)
    except (EOFError, ValueError, TypeError):
        their_seen = their_suspects = None
    if not isinstance(their_seen, list) or not isinstance(their_suspects, list):
        _walk_all(theirs, keys, seen, suspects)  # the child failed: do its half here
    else:
        seen += their_seen
        suspects += their_suspects
    return seen, suspects


def scan(root: Path, index: Index) -> ScanResult:
    """Compare the files under `root` with the base recorded in `index`; update the index's stat data.

    Files whose stat key matches the cache cost one `lstat` and a dict lookup; the full entries are decoded and
    touched only for the rest (new, changed, smudged or deleted files).
    """
    keys, changes = index._sync()
    started = time.time_ns()
    seen, suspects = _walk(os.fspath(root), keys)
    changes = dict(changes)
    if not suspects and len(seen) == len(keys):
        return ScanResult(changes, 0)  # every cached file is there, unchanged: nothing to decode or save
    entries = index.entries
    if index._keys is None:  # the stored entries were damaged: compare against what could be recovered
        return scan(root, index)
    rehashed = _record(entries, changes, suspects, started)
    if len(seen) != len(entries):  # new files were added to `entries` as seen, so a gap means deletions
        present = set(seen)
        rehashed += _record_gone(entries, changes, [p for p in entries if p not in present])
    return ScanResult(changes, rehashed)


def _record(
    entries: dict[str, Entry], changes: dict[str, Change], suspects: list[Suspect], stat_since_ns: int
) -> int:
    """Hash the suspects into `entries` and `changes`; return how many. Raise BadRequest for a path mic cannot
    track (`mic.paths`: a name that is not UTF-8); the walk already skips the others.

    A file modified within `RACY_NS` before its stat (taken after `stat_since_ns`) is stored smudged at once: a
    same-size write in the same clock tick after our stat would leave its stat key unchanged, and the save-time
    rule alone misses that when the index is saved long after the scan (as `mic land` does)."""
    racy_from = stat_since_ns - RACY_NS
    for rel, full, size, mtime_ns, ino, mode, ctime_ns in suspects:
        check_path(rel)  # a name mic cannot store (not UTF-8) fails here, before any land writes anything
        e = entries.get(rel)
        base = (e[5], e[6], e[7]) if e is not None else (None, 0, 0)
        cur = hash_path(full, mode)
        entries[rel] = (size, mtime_ns if mtime_ns < racy_from else -1, ino, cur, mode, *base, ctime_ns)
        changes.pop(rel, None)
        if base[0] is None:
            changes[rel] = ("added", cur, mode, size)
        elif cur != base[0] or mode != base[1]:
            changes[rel] = ("modified", cur, mode, size)
    return len(suspects)


def _record_gone(entries: dict[str, Entry], changes: dict[str, Change], gone: list[str]) -> int:
    """Record cached paths no longer on disk: a deletion if in the base, else forget it; return the forgotten."""
    forgotten = 0
    for rel in gone:
        e = entries[rel]
        if e[5] is not None:
            changes[rel] = ("deleted", None, 0, 0)
            if e[3] is not None:
                entries[rel] = (-1, -1, -1, None, 0, e[5], e[6], e[7], -1)
        else:
            del entries[rel]  # an untracked file that went away
            changes.pop(rel, None)
            forgotten += 1
    return forgotten


class _EntryKeys:
    """`keys.get` answered from the entries, for walking a few subtrees without decoding the stat-key blob."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self._entries = entries

    def get(self, rel: str) -> Key | None:
        e = self._entries.get(rel)
        return None if e is None else _key(e)


def _under(rel: str, prefixes: set[str]) -> bool:
    """Whether some directory prefix ("a/", "a/b/") of `rel` is in `prefixes`."""
    i = rel.find("/")
    while i != -1:
        if rel[: i + 1] in prefixes:
            return True
        i = rel.find("/", i + 1)
    return False


def scan_paths(root: Path, index: Index, paths: list[str]) -> ScanResult:
    """`scan` looking only at `paths` (a watcher's report): files, and directory prefixes ending in "/" whose
    subtree is walked. Every other cached entry is taken as it is: the caller vouches that nothing else changed
    since the index's token. A path counts only where the full scan would find it: below real directories (not
    symlinks, not skipped by `mic.paths`), a regular file or symlink not skipped either.
    """
    if not paths:
        return ScanResult(dict(index.changes()), 0)
    started = time.time_ns()
    entries = index.entries
    if index.token is None:  # the stored entries were damaged
        return scan(root, index)
    top = os.fspath(root)
    walked: set[str] = set()
    for prefix in sorted({p for p in paths if p.endswith("/")}):  # a directory sorts before what is under it
        if not _under(prefix, walked):
            walked.add(prefix)
    is_dir: dict[str, bool] = {"": True}

    def real_dir(prefix: str) -> bool:
        if prefix not in is_dir:
            parent = prefix[: prefix.rfind("/", 0, -1) + 1]
            ok = not skipped(parent, prefix[len(parent) : -1]) and real_dir(parent)
            if ok:
                try:
                    ok = stat.S_ISDIR(os.lstat(top + "/" + prefix[:-1]).st_mode)  # no "/": it follows links
                except OSError:
                    ok = False
            is_dir[prefix] = ok
        return is_dir[prefix]

    keys = _EntryKeys(entries)
    seen: list[str] = []
    suspects: list[Suspect] = []
    for prefix in walked:
        if real_dir(prefix):
            _walk_all([(prefix, top + "/" + prefix[:-1])], keys, seen, suspects)
    checked = [rel for rel in set(paths) if not rel.endswith("/") and not _under(rel, walked)]
    for rel in checked:
        parent = rel[: rel.rfind("/") + 1]
        if skipped(parent, rel[len(parent) :]) or not real_dir(parent):
            continue
        try:
            st = os.lstat(top + "/" + rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        kind = st.st_mode & 0o170000
        if kind == 0o100000:
            mode = 1 if st.st_mode & 0o100 else 0
        elif kind == 0o120000:
            mode = 2
        else:
            continue
        seen.append(rel)
        if keys.get(rel) != stat_key_of(st, mode):
            suspects.append((rel, top + "/" + rel, st.st_size, st.st_mtime_ns, st.st_ino, mode, st.st_ctime_ns))
    changes = dict(index.changes())
    present = set(seen)
    gone = [rel for rel in checked if rel not in present and rel in entries]
    if walked:
        gone += [rel for rel in entries if rel not in present and _under(rel, walked)]
    rehashed = _record(entries, changes, suspects, started) + _record_gone(entries, changes, gone)
    return ScanResult(changes, rehashed)
