"""The local store makes each new name durable: the directory it is linked into is fsynced before the write
returns (a power cut cannot keep `head` while losing `landing/<n>` or a tree node it refers to)."""

from __future__ import annotations

from mic.objectstore import local
from mickernel import atomic


async def test_each_link_and_replace_fsyncs_its_directory_after_the_name_exists(tmp_path, monkeypatch):
    synced: list[tuple[str, bool]] = []
    real = atomic.fsync_dir

    def recording(directory):
        synced.append((str(directory.relative_to(tmp_path)), (directory / "k").exists()))
        real(directory)

    monkeypatch.setattr(atomic, "fsync_dir", recording)  # after each write
    monkeypatch.setattr(local, "fsync_dir", recording)  # after each new directory
    store = local.LocalObjectStore(tmp_path)
    etag = await store.put_if_absent("p/landing/k", b"one")
    assert ("p/landing", True) in synced  # after the link: the name itself is what must survive
    assert {d for d, _ in synced} >= {".", "p"}  # and the new directories' entries in their parents
    synced.clear()
    await store.put_if_absent("p/landing/j", b"two")
    assert synced == [("p/landing", True)]  # a known directory costs one fsync per object
    synced.clear()
    await store.put_if_match("p/landing/k", b"three", etag)
    assert synced == [("p/landing", True)]
