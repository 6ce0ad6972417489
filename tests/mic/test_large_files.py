"""Files above the chunk size are landed and checked out chunk by chunk, never whole in memory."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from mic import objects, vcs
from mic.errors import WorkspaceError
from mic.formats.blob import encode_blob
from mic.formats.chunked import CHUNK_SIZE, decode_chunked, encode_chunked
from mic.objects import Project, content_hash
from mic.objectstore import open_store
from mic.workspace import Workspace
from mickernel.errors import IntegrityError
from tests.mic.test_land_workspace import _checkout

MiB = 1024 * 1024


def _write_random(path, size: int) -> None:
    """A file of `size` random (incompressible) bytes, written a chunk at a time."""
    with open(path, "wb") as f:
        f.writelines(os.urandom(min(CHUNK_SIZE, size - start)) for start in range(0, size, CHUNK_SIZE))


def _refuse_whole_large_content(monkeypatch) -> None:
    """Make holding a large file whole in memory through `Project` an error: land and checkout must stream."""
    real_put, real_read = Project.put_content, Project.read_content

    async def put_content(self, data, digest=None):
        assert len(data) <= CHUNK_SIZE, "a large file was handed to put_content whole"
        return await real_put(self, data, digest)

    async def read_content(self, h):
        assert (await self._blob_object(h))[:4] != b"MICC", "a large file was read whole"
        return await real_read(self, h)

    monkeypatch.setattr(Project, "put_content", put_content)
    monkeypatch.setattr(Project, "read_content", read_content)


async def _blobs(project: Project) -> dict[str, bytes]:
    """Every blob object of `project`, by key below the project."""
    keys = await project.store.list(f"{project.name}/blobs/")
    return {key: (await project.store.get(key)).data for key in keys}


def _blob_file(project: Project, h: bytes):
    return project.store.root / project.name / "blobs" / h.hex()[:2] / h.hex()


async def _land_large(project: Project, tmp_path, size: int = 3 * CHUNK_SIZE + 1) -> tuple[Workspace, bytes]:
    """A workspace `a` that landed big.bin (`size` random bytes, executable); returns it and the content."""
    ws = await _checkout(project, tmp_path / "a")
    big = ws.root / "big.bin"
    _write_random(big, size)
    big.chmod(0o755)
    await vcs.land_workspace(project, ws, "add a large file")
    return ws, big.read_bytes()


async def test_landing_streams_and_stores_the_objects_put_content_stores(project, tmp_path, monkeypatch):
    """The streamed objects are byte for byte what `put_content` writes (same keys, same encoding): projects
    written before streaming read the same, and a file landed either way is stored once."""
    data = os.urandom(3 * CHUNK_SIZE + 1)
    reference = Project(open_store(f"file://{tmp_path / 'reference'}"), "p")
    h, written = await reference.put_content(data)
    assert written == 5  # four MICB chunks and the MICC list

    _refuse_whole_large_content(monkeypatch)
    ws = await _checkout(project, tmp_path / "ws")
    (ws.root / "big.bin").write_bytes(data)
    await vcs.land_workspace(project, ws, "add a large file")

    blobs = await _blobs(project)
    assert blobs == await _blobs(reference)
    assert decode_chunked(blobs[f"p/blobs/{h.hex()[:2]}/{h.hex()}"])[-1] == content_hash(data[-1:])
    await reference.store.close()


@pytest.mark.parametrize("change", ["same size", "grown"])
async def test_a_file_changed_between_chunks_fails_the_land(project, tmp_path, monkeypatch, change):
    """An edit made while the file is read (after its first chunk) is caught by the whole file's hash (or size):
    the land fails as when the file changed before it was read, and no MICC object claims the scanned hash."""
    ws = await _checkout(project, tmp_path / "ws")
    big = ws.root / "big.bin"
    _write_random(big, 3 * CHUNK_SIZE + 1)
    expected = content_hash(big.read_bytes())
    real_encode = objects.encode_blob
    edited = []

    def encode_then_edit(data, **kwargs):
        if not edited:
            edited.append(True)
            with open(big, "r+b") as f:
                if change == "grown":
                    f.seek(0, os.SEEK_END)
                else:
                    f.seek(2 * CHUNK_SIZE)
                f.write(b"edited while mic land read the file")
        return real_encode(data, **kwargs)

    monkeypatch.setattr(objects, "encode_blob", encode_then_edit)
    with pytest.raises(WorkspaceError, match=r"changed while running `mic land`; run `mic land` again"):
        await vcs.land_workspace(project, ws, "add a large file")
    assert edited
    assert await project.get(f"blobs/{expected.hex()[:2]}/{expected.hex()}") is None
    assert (await project.read_head())[0].position == 0


async def test_checkout_of_a_large_file_round_trips(project, tmp_path, monkeypatch):
    _, data = await _land_large(project, tmp_path)
    _refuse_whole_large_content(monkeypatch)

    ws = await _checkout(project, tmp_path / "b")
    big = ws.root / "big.bin"
    assert big.read_bytes() == data
    assert os.access(big, os.X_OK)
    assert sorted(p.name for p in ws.root.iterdir()) == [".mic", "big.bin"]
    assert (await vcs.status(Workspace.open(ws.root))).changes == {}


async def test_a_sync_over_a_large_file_checks_the_disk_right_before_replacing_it(project, tmp_path, monkeypatch):
    """An edit made while the chunks are fetched is kept: the disk is checked after the last chunk."""
    a, _ = await _land_large(project, tmp_path)
    b = await _checkout(project, tmp_path / "b")
    _write_random(a.root / "big.bin", 2 * CHUNK_SIZE + 7)
    await vcs.land_workspace(project, a, "change the large file")
    _refuse_whole_large_content(monkeypatch)

    real_decode = objects.decode_blob
    big = b.root / "big.bin"

    def decode_then_edit(raw):
        big.write_bytes(b"our edit, made while the sync fetched\n")
        return real_decode(raw)

    monkeypatch.setattr(objects, "decode_blob", decode_then_edit)
    target = (await vcs.tree_at(project, None))[1]
    synced = await vcs.sync_to(project, b, target)

    assert synced.kept == ("big.bin",)
    assert big.read_bytes() == b"our edit, made while the sync fetched\n"
    assert not list(b.root.glob("*.mic-tmp"))


@pytest.mark.parametrize("damage", ["chunk", "whole file"])
async def test_a_corrupt_large_file_fails_the_sync_and_leaves_the_workspace_file(
    project, tmp_path, monkeypatch, damage
):
    """A chunk that does not hash to its name, or chunks that do but make another file, is an IntegrityError
    before the file becomes visible (the chunks before it already streamed to the temp file): the old version
    stays, and no temp file is left behind."""
    a, old = await _land_large(project, tmp_path)
    b = await _checkout(project, tmp_path / "b")
    _write_random(a.root / "big.bin", 3 * CHUNK_SIZE + 1)
    new = (a.root / "big.bin").read_bytes()
    await vcs.land_workspace(project, a, "change the large file")
    _refuse_whole_large_content(monkeypatch)

    h = content_hash(new)
    chunks = decode_chunked(_blob_file(project, h).read_bytes())
    if damage == "chunk":
        _blob_file(project, chunks[1]).write_bytes(encode_blob(os.urandom(CHUNK_SIZE)))
    else:  # the first version's chunks, all intact, listed under the new version's hash
        old_chunks = decode_chunked(_blob_file(project, content_hash(old)).read_bytes())
        _blob_file(project, h).write_bytes(encode_chunked(old_chunks))
    target = (await vcs.tree_at(project, None))[1]

    with pytest.raises(IntegrityError):
        await vcs.sync_to(project, b, target)
    assert (b.root / "big.bin").read_bytes() == old
    assert sorted(p.name for p in b.root.iterdir()) == [".mic", "big.bin"]

    with pytest.raises(IntegrityError):  # a fresh checkout: no partial file either
        await _checkout(project, tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".mic"]


async def test_landing_and_checking_out_a_64_mib_file_holds_a_few_chunks_in_memory(project, tmp_path):
    """Python's peak allocation stays far below the file's size (the whole-file code peaked above 64 MiB)."""
    ws = await _checkout(project, tmp_path / "a")
    _write_random(ws.root / "big.bin", 64 * MiB)

    tracemalloc.start()
    try:
        await vcs.land_workspace(project, ws, "add a 64 MiB file")
        land_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        b = await _checkout(project, tmp_path / "b")
        checkout_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    print(f"peak: land {land_peak / MiB:.1f} MiB, checkout {checkout_peak / MiB:.1f} MiB")
    assert land_peak < 24 * MiB
    assert checkout_peak < 24 * MiB
    assert content_hash((b.root / "big.bin").read_bytes()) == content_hash((ws.root / "big.bin").read_bytes())
