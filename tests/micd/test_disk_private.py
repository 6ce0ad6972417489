"""The disk tier's cache is private to its user: every directory it creates is 0700 and every file it writes
0600, whatever the umask, so other local users cannot even list which digests are cached. An existing root
of ours with looser modes (an older version made 0755 directories, a 0644 snapshot) is tightened on open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from micd.store import Digest, Record
from micd.tiers.disk import DiskTier
from tests.micd.helpers import blob, chunked


@pytest.fixture(autouse=True)
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def loose(root: Path) -> list[str]:
    """Everything under `root` (and `root` itself) that a group or other user may read or search."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


async def fill(tier: DiskTier) -> None:
    small, large = blob(1000, 1), blob(3 << 20, 2)
    await tier.put_bytes(Digest.of(small), small)  # group commit: journal segment + unnamed file
    await tier.put(Digest.of(large), chunked(large, 1 << 16))  # temp file + rename
    await tier.put_record("ns", "key", Record(b"v" * 100))


async def test_a_new_root_and_everything_written_under_it_are_private(tmp_path):
    root = tmp_path / "xdg" / "mic" / "store"  # parents created by the tier too
    tier = DiskTier(root, soft_cap=1 << 30, hard_cap=1 << 30, verify_limit=64 << 10)
    await tier.open()
    try:
        await fill(tier)
        assert loose(tmp_path / "xdg") == []  # while open: the temp area, its lock and journal too
    finally:
        await tier.close()
    assert tier.layout.snapshot.exists()
    assert loose(tmp_path / "xdg") == []


async def test_an_existing_root_of_ours_is_tightened_on_open(tmp_path):
    root = tmp_path / "cache"
    first = DiskTier(root, soft_cap=1 << 30, hard_cap=1 << 30)
    await first.open()
    await fill(first)
    await first.close()
    for path in [root, *root.rglob("*")]:  # as an older version left it
        path.chmod(0o755 if path.is_dir() else 0o644)
    second = DiskTier(root, soft_cap=1 << 30, hard_cap=1 << 30)
    await second.open()
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700  # nobody else can get past the root
        assert stat.S_IMODE((root / "v1").stat().st_mode) == 0o700
        assert stat.S_IMODE(second.layout.snapshot.stat().st_mode) == 0o600
    finally:
        await second.close()
    assert stat.S_IMODE(second.layout.snapshot.stat().st_mode) == 0o600
