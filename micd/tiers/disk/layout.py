"""Where the disk tier keeps things under the shared cache root, and the index keys naming each file.

Layout (the version is in the directory name, so a future layout can live beside this one and migrate):

    <root>/v1/cas/<function>/<hh>/<hex>.<size>   a verified CAS blob (hh = first two hex digits)
    <root>/v1/kv/<hh>/<hex>                      a KV record file; hex = sha256(namespace NUL key)
    <root>/v1/tmp/<owner>/                      temp files of one live DiskTier; <owner>/lock is flock'ed
    <root>/v1/tmp/<owner>/journal/seg.<n>       its small-blob journal (group commit, see `journal.py`)
    <root>/v1/index/snapshot                    the index snapshot (see `index.py`)
    <root>/v1/usage                             bytes used and claimed by all daemons (see `usage.py`)

Other components keep their own directories under `<root>/v1/` (e.g. `s3-queue/`); nothing here touches
names it does not recognise.

The size is part of a CAS file name so that an index rebuild needs only directory listings (no stat per
file), and so a digest announced with a wrong size is a plain miss. KV file names are hashes, so no
namespace or key can name a path outside the tree; callers' names are still validated (`check_kv_name`).

Index keys are short strings: `"<function>/<hex>.<size>"` for a blob, `"kv/<hex>"` for a record. All
functions here are pure but `make_private_dirs` and `Layout.make_dirs`.

Privacy: the cache is its user's alone (its file names say which digests are cached), so every directory
the tier creates is 0700 and every file it writes 0600, whatever the umask.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from micd.store import FUNCTIONS, Digest
from micd.validate import parse_key, parse_namespace
from mickernel.errors import BadRequest

__all__ = [
    "KV",
    "VERSION_DIR",
    "Layout",
    "blob_key",
    "check_kv_name",
    "kv_hex",
    "kv_key",
    "make_private_dirs",
    "parse_blob_name",
]

VERSION_DIR = "v1"
KV = "kv"
SHARDS = tuple(f"{i:02x}" for i in range(256))


def blob_key(digest: Digest) -> str:
    """Index key of a CAS blob."""
    return f"{digest.function}/{digest.hex}.{digest.size}"


def check_kv_name(namespace: str, key: str) -> None:
    """Reject namespaces/keys that could escape the tree (BadRequest), even though file names are hashed."""
    if "\x00" in namespace or "\x00" in key:
        raise BadRequest("NUL in KV name", f"{namespace!r}/{key!r}")
    parse_namespace(namespace)
    parse_key(key)


def kv_hex(namespace: str, key: str) -> str:
    """File name of the record for (namespace, key): collision-free in practice, never a path."""
    return hashlib.sha256(f"{namespace}\x00{key}".encode()).hexdigest()


def kv_key(namespace: str, key: str) -> str:
    """Index key of a KV record."""
    return f"{KV}/{kv_hex(namespace, key)}"


def parse_blob_name(name: str) -> int | None:
    """Size encoded in a CAS file name `<hex>.<size>`, or None if the name is not ours."""
    hex_, dot, size = name.partition(".")
    if not dot or len(hex_) != 64 or not size.isdigit() or len(size) > 16:
        return None
    return int(size)


def make_private_dirs(path: Path | str) -> None:
    """`mkdir -p` with mode 0700 for every directory it creates (`os.makedirs` gives parents the umask's
    mode); existing ones are left as they are (blocking)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_private_dirs(os.path.dirname(path))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def _tighten(path: Path, private: int) -> None:
    """Drop group and other access from `path` if it is ours (an older version's 0755/0644); blocking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, private)


class Layout:
    """Paths under one cache root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = self.root / VERSION_DIR
        self.cas = self.base / "cas"
        self.kv = self.base / KV
        self.tmp = self.base / "tmp"
        self.index = self.base / "index"
        self.snapshot = self.index / "snapshot"
        self.usage = self.base / "usage"
        self._shards: list[tuple[str, str]] | None = None
        self.cas_prefix = f"{self.cas}/"
        """`cas` as a string ending in "/", for building many blob paths cheaply."""

    def blob_path(self, digest: Digest) -> Path:
        return self.cas / digest.function / digest.hex[:2] / f"{digest.hex}.{digest.size}"

    def blob_file(self, digest: Digest) -> str:
        """`blob_path` as a plain string: ~20x cheaper than three `Path` joins, for per-digest hot loops."""
        hex_ = digest.hex
        return f"{self.cas_prefix}{digest.function}/{hex_[:2]}/{hex_}.{digest.size}"

    def kv_path(self, namespace: str, key: str) -> Path:
        hex_ = kv_hex(namespace, key)
        return self.kv / hex_[:2] / hex_

    def key_path(self, key: str) -> Path:
        """Path of the file an index key names."""
        kind, _, name = key.partition("/")
        if kind == KV:
            return self.kv / name[:2] / name
        return self.cas / kind / name[:2] / name

    def shard_dirs(self) -> list[tuple[str, str]]:
        """(key prefix, directory) for every shard directory that may hold index entries.

        Plain strings, built once: 768 `Path` objects cost more than listing the directories.
        """
        if self._shards is None:
            cas, kv = str(self.cas), str(self.kv)
            self._shards = [(f"{fn}/", f"{cas}/{fn}/{hh}") for fn in FUNCTIONS for hh in SHARDS]
            self._shards += [(f"{KV}/", f"{kv}/{hh}") for hh in SHARDS]
        return self._shards

    def make_dirs(self) -> None:
        """Create every shard directory, so writers never race on mkdir (blocking: call in a thread).

        Skipped when the last directory this creates exists (a previous open finished). A shard removed by
        hand later is recreated by the first write into it (`files.TempWriter.publish`, `files.publish_unsynced`).
        An existing root of ours is made private first: 0700 on the root (nobody else gets past it, so the
        shards below need no chmod each) and on its top directories, 0600 on the snapshot.
        """
        for path in (self.root, self.base, self.cas, self.kv, self.tmp, self.index):
            _tighten(path, 0o700)
        _tighten(self.snapshot, 0o600)
        make_private_dirs(self.tmp)
        make_private_dirs(self.index)
        shards = self.shard_dirs()
        if os.path.isdir(shards[-1][1]):
            return
        for _, shard in shards:
            make_private_dirs(shard)
