"""The workspace scan and its stat cache (`.mic/index`): `mic status` re-hashes only files whose stat changed.

The index maps each path to (size, mtime_ns, inode, content hash, mode) as last seen on disk, plus the (hash,
mode, size) the base tree holds for it (None for a file not in the base). A file whose size, mtime and inode
match its entry is not read again. Linux file timestamps are coarse (a few ms), so when the index is saved, every
entry whose mtime is within `RACY_NS` of that moment is "smudged" (mtime -1) and re-hashed next time: a change
made in the same clock tick as our hash cannot hide behind an unchanged mtime. This is git's racy-index rule, and
like git it lets a fresh checkout trust every file written more than `RACY_NS` before the index was saved. The
index is a `marshal`led dict, written with temp + rename.
"""

from __future__ import annotations

import marshal
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3

__all__ = ["IGNORED", "Index", "ScanResult", "file_mode", "hash_path", "scan"]

IGNORED = frozenset({".mic", ".git"})
RACY_NS = 100_000_000
_VERSION = 1

# entry = (size, mtime_ns, ino, cur_hash, cur_mode, base_hash | None, base_mode, base_size)
Entry = tuple[int, int, int, bytes, int, bytes | None, int, int]


def file_mode(st: os.stat_result) -> int:
    """0 regular, 1 executable, 2 symlink (the FileEntry modes)."""
    if stat.S_ISLNK(st.st_mode):
        return 2
    return 1 if st.st_mode & stat.S_IXUSR else 0


def hash_path(path: Path, mode: int) -> bytes:
    """BLAKE3 of a file's content (a symlink's content is its target)."""
    if mode == 2:
        return blake3.blake3(os.fsencode(os.readlink(path))).digest()
    hasher = blake3.blake3()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.digest()


@dataclass
class Index:
    """The stat cache; `entries` is mutated in place and saved with `save()`."""

    path: Path
    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            data = marshal.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except (EOFError, ValueError, TypeError):
            return cls(path)  # a damaged cache only costs re-hashing; the base is rebuilt by `mic status`
        if not isinstance(data, tuple) or len(data) != 2 or data[0] != _VERSION:
            return cls(path)
        return cls(path, data[1])

    def save(self) -> None:
        cutoff = time.time_ns() - RACY_NS
        racy = [rel for rel, e in self.entries.items() if e[1] >= cutoff]
        for rel in racy:
            e = self.entries[rel]
            self.entries[rel] = (e[0], -1, *e[2:])
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(marshal.dumps((_VERSION, self.entries)))
        os.replace(tmp, self.path)

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

    changes: dict[str, tuple[str, bytes | None, int, int]]
    rehashed: int


def _record(root: Path, rel: str, st: os.stat_result, e: Entry | None, entries: dict[str, Entry]) -> Entry:
    """Hash a file whose stat data changed (or that is new) and store its fresh entry."""
    mode = 2 if stat.S_ISLNK(st.st_mode) else (1 if st.st_mode & stat.S_IXUSR else 0)
    cur = hash_path(root / rel, mode)
    base = (e[5], e[6], e[7]) if e is not None else (None, 0, 0)
    entry: Entry = (st.st_size, st.st_mtime_ns, st.st_ino, cur, mode, *base)
    entries[rel] = entry
    return entry


def scan(root: Path, index: Index) -> ScanResult:
    """Compare the files under `root` with the base recorded in `index`; update the index's stat data.

    This loop is the whole cost of `mic status` on a large tree, so it is written flat: one `scandir` per
    directory, one `lstat` per file, and no per-file work beyond a dict lookup and four integer compares when
    the stat data is unchanged.
    """
    entries = index.entries
    lookup = entries.get
    changes: dict[str, tuple[str, bytes | None, int, int]] = {}
    seen: list[str] = []
    rehashed = 0
    is_lnk, is_reg, xusr = stat.S_ISLNK, stat.S_ISREG, stat.S_IXUSR
    stack = [("", os.fspath(root))]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as it:
            for dirent in it:
                if dirent.is_dir(follow_symlinks=False):
                    if dirent.name not in IGNORED:
                        stack.append((prefix + dirent.name + "/", dirent.path))
                    continue
                st = dirent.stat(follow_symlinks=False)
                st_mode = st.st_mode
                if not (is_reg(st_mode) or is_lnk(st_mode)):
                    continue  # sockets, fifos, devices are not content
                rel = prefix + dirent.name
                seen.append(rel)
                e = lookup(rel)
                mode = 2 if is_lnk(st_mode) else (1 if st_mode & xusr else 0)
                if e is None or e[1] != st.st_mtime_ns or e[0] != st.st_size or e[2] != st.st_ino or e[4] != mode:
                    e = _record(root, rel, st, e, entries)
                    rehashed += 1
                if e[5] is None:
                    changes[rel] = ("added", e[3], mode, e[0])
                elif e[3] != e[5] or mode != e[6]:
                    changes[rel] = ("modified", e[3], mode, e[0])
    if len(seen) != len(entries):  # new files were added to `entries` as seen, so a gap means deletions
        present = set(seen)
        for rel in [p for p in entries if p not in present]:
            if entries[rel][5] is not None:
                changes[rel] = ("deleted", None, 0, 0)
            else:
                del entries[rel]  # an untracked file that went away
                rehashed += 1
    return ScanResult(changes, rehashed)
