"""Landing internals on both stores: large files, lagging heads, bloom false positives, lost races."""

from __future__ import annotations

import os

import pytest

from mic.bloom import Bloom
from mic.errors import Conflict
from mic.formats.btree_node import FileEntry
from mic.formats.landing import Landing, encode_landing
from mic.landing import land, roll_forward
from mic.objects import Project, content_hash, landing_key
from mic.objectstore import open_store
from mic.session import start_session
from mic.tree import EMPTY_ROOT, Tree
from mickernel.errors import IntegrityError
from tests.conformance.objectstore_fixtures import s3_atomic, s3_atomic_server, store_url  # noqa: F401


@pytest.fixture
async def project(store_url):  # noqa: F811
    url, endpoint = store_url
    store = open_store(url, s3_endpoint_url=endpoint)
    p = Project(store, "p")
    await p.create(1)
    yield p
    await store.close()


async def _land(project, files: dict[str, bytes | None], base: int | None = None, goal: str = "g"):
    tip, _ = await roll_forward(project)
    session = await start_session(project, goal, tip.position if base is None else base, 5)
    changes = {p: None if d is None else FileEntry(content_hash(d), len(d), 0) for p, d in files.items()}

    async def write_blobs() -> int:
        return sum([(await project.put_content(d))[1] for d in files.values() if d is not None])

    kinds = {p: "deleted" if d is None else "added" for p, d in files.items()}
    return await land(project, session, changes, kinds, write_blobs, hlc=lambda t: t + 1)


async def test_large_file_is_chunked_and_verified(project):
    data = os.urandom(9 * 1024 * 1024 + 5)
    h, written = await project.put_content(data)
    assert written == 4  # three MICB chunks and one MICC list
    assert await project.read_content(h) == data
    assert (await project.put_content(data))[1] == 0  # idempotent


async def test_lagging_head_is_rolled_forward(project):
    first = await _land(project, {"a": b"1"})
    rec = first.landing
    # a lander that died after creating its record: landing/2 exists, the head still says 1
    orphan = Landing(2, 1, rec.tree, rec.hlc + 1, "deadbeef0000", "crashed", ("zzz",), Bloom.of(["zzz"]))
    await project.put_if_absent(landing_key(2), encode_landing(orphan))
    tip, _ = await roll_forward(project)
    assert tip.position == 2
    second = await _land(project, {"b": b"2"})
    assert second.landing.position == 3
    with pytest.raises(Conflict) as info:
        await _land(project, {"zzz": b"x"}, base=1)
    assert info.value.sessions == ("deadbeef0000",) and info.value.paths == ("zzz",)


async def test_bloom_false_positive_is_not_a_conflict(project):
    await _land(project, {"a": b"1"})
    rec = await project.landing(1)
    # a record whose bloom says "maybe" for every path, but whose exact list does not hold ours
    saturated = Landing(2, 1, rec.tree, 9, "aaaaaaaaaaaa", "noise", ("other",), Bloom(7, b"\xff" * 8))
    await project.put_if_absent(landing_key(2), encode_landing(saturated))
    out = await _land(project, {"mine": b"m"}, base=1)
    assert out.landing.position == 3


async def test_conflict_changes_nothing(project):
    await _land(project, {"a": b"1"})
    await _land(project, {"a": b"2"}, base=1)
    keys_before = await project.store.list("p/")
    with pytest.raises(Conflict):
        await _land(project, {"a": b"3", "new": b"n"}, base=1)
    after = set(await project.store.list("p/")) - set(keys_before)
    assert all(k.startswith("p/sessions/") for k in after)  # only the session record we started
    assert (await roll_forward(project))[0].position == 2


async def test_landing_writes_logarithmic_objects(project):
    files = {f"dir{i % 10}/f{i:05d}": str(i).encode() for i in range(800)}
    await _land(project, files)
    out = await _land(project, {"dir3/f00003": b"changed"})
    tree_nodes = out.objects_written - 1 - 3  # minus the blob, the landing record, head and session
    assert 1 <= tree_nodes <= 3
    tip, _ = await roll_forward(project)
    assert await Tree(project).lookup(tip.tree, "dir3/f00003") == FileEntry(content_hash(b"changed"), 7, 0)


async def test_deleting_everything_lands_the_empty_tree(project):
    await _land(project, {"a": b"1"})
    out = await _land(project, {"a": None})
    assert out.landing.tree == EMPTY_ROOT


async def test_corrupted_tree_node_is_an_integrity_error(project, store_url):  # noqa: F811
    await _land(project, {"a": b"1"})
    tip, _ = await roll_forward(project)
    url, endpoint = store_url
    key = f"trees/{tip.tree.hex()[:2]}/{tip.tree.hex()}"
    await project.store.delete(project.key(key))
    await project.put_if_absent(key, b"MICN\x01\x00\x00\x00\x00\x00")  # a valid node, but not this hash
    fresh = Project(open_store(url, s3_endpoint_url=endpoint), "p")
    with pytest.raises(IntegrityError):
        await Tree(fresh).lookup(tip.tree, "a")
    await fresh.store.close()


async def test_file_and_directory_clash_is_a_conflict(project):
    await _land(project, {"seed": b"s"})
    await _land(project, {"a": b"file a"}, base=1)
    with pytest.raises(Conflict) as info:
        await _land(project, {"a/b": b"inside a", "c": b"c"}, base=1)
    assert info.value.paths == ("a/b",)
    await _land(project, {"d/e/f": b"deep"}, base=1)
    with pytest.raises(Conflict) as info:
        await _land(project, {"d": b"now a file"}, base=1)
    assert info.value.paths == ("d",)


async def test_recovery_records_what_landed_not_what_was_asked(project):
    """A rerun after a crash finds its session already landed: the session lists that landing's changes, not the
    rerun's (which may hold later work that did not land)."""
    from mic.session import load_session

    await _land(project, {"old": b"0", "gone": b"0"})
    session = await start_session(project, "g", 1, 5)

    async def run(files: dict[str, bytes | None]):
        changes = {p: None if d is None else FileEntry(content_hash(d), len(d), 0) for p, d in files.items()}

        async def write_blobs() -> int:
            return sum([(await project.put_content(d))[1] for d in files.values() if d is not None])

        kinds = {p: "deleted" if d is None else "added" for p, d in files.items()}
        return await land(project, session, changes, kinds, write_blobs, hlc=lambda t: t + 1)

    first = await run({"a": b"1", "old": b"1", "gone": None})  # lands; the process dies before it is recorded
    second = await run({"a": b"1", "b": b"new work"})  # the rerun: same session, more work since
    assert second.recovered and second.landing.paths == first.landing.paths == ("a", "gone", "old")
    stored, _ = await load_session(project, session.id)
    assert [(c.kind, c.path) for c in stored.changes] == [("added", "a"), ("deleted", "gone"), ("modified", "old")]


async def test_a_lost_landing_record_below_the_tip_stops_the_land(project, store_url):  # noqa: F811
    """A conflict check that skipped the lost record would let this land overwrite `a` without a conflict."""
    from mic.errors import LostLanding

    await _land(project, {"a": b"1"})
    await _land(project, {"b": b"2"})
    await project.store.delete(project.key(landing_key(1)))
    url, endpoint = store_url
    fresh = Project(open_store(url, s3_endpoint_url=endpoint), "p")  # no record cached in memory
    try:
        with pytest.raises(LostLanding, match="landing/1 is missing"):
            await _land(fresh, {"a": b"overwrite"}, base=0)
        assert await fresh.landing(3) is None
    finally:
        await fresh.store.close()
