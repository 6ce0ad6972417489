"""ObjectStore conformance: the same contract checked against the local directory store and S3 (moto server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mic.errors import PreconditionFailed
from mic.objectstore import open_store
from mickernel.errors import BadRequest
from tests.conformance.objectstore_fixtures import s3_atomic, s3_atomic_server, store_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(store_url):  # noqa: F811
    url, endpoint = store_url
    s = open_store(url, s3_endpoint_url=endpoint)
    yield s
    await s.close()


async def test_get_missing_is_none(store):
    assert await store.get("nothing/here") is None


async def test_put_if_absent_then_get(store):
    etag = await store.put_if_absent("a/b", b"hello")
    obj = await store.get("a/b")
    assert obj.data == b"hello" and obj.etag == etag


async def test_put_if_absent_refuses_existing_and_keeps_bytes(store):
    await store.put_if_absent("k", b"first")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("k", b"second")
    assert (await store.get("k")).data == b"first"


async def test_put_if_match_swaps_only_on_current_etag(store):
    etag1 = await store.put_if_absent("head", b"v1")
    etag2 = await store.put_if_match("head", b"v2", etag1)
    assert etag2 != etag1
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("head", b"v3", etag1)  # stale ETag
    obj = await store.get("head")
    assert obj.data == b"v2" and obj.etag == etag2


async def test_put_if_match_on_missing_key_fails(store):
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("ghost", b"x", '"0123"')
    assert await store.get("ghost") is None


async def test_list_prefix_sorted_and_exact(store):
    for key in ["landing/2", "landing/10", "landing/1", "lands/x", "sessions/s1"]:
        await store.put_if_absent(key, key.encode())
    assert await store.list("landing/") == ["landing/1", "landing/10", "landing/2"]
    assert await store.list("land") == ["landing/1", "landing/10", "landing/2", "lands/x"]
    assert await store.list("nope/") == []


async def test_delete_then_recreate(store):
    await store.put_if_absent("tmp/x", b"1")
    await store.delete("tmp/x")
    await store.delete("tmp/x")  # idempotent
    assert await store.get("tmp/x") is None
    await store.put_if_absent("tmp/x", b"2")
    assert (await store.get("tmp/x")).data == b"2"


async def test_large_object_round_trips(store):
    data = os.urandom(3 * 1024 * 1024 + 7)
    await store.put_if_absent("big", data)
    assert (await store.get("big")).data == data


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "/abs", "a//b", ".tmp/x", "a/.locks", "sp ace", "a/"])
async def test_bad_keys_are_rejected(store, key):
    with pytest.raises(BadRequest):
        await store.put_if_absent(key, b"x")
    with pytest.raises(BadRequest):
        await store.get(key)


def _race(url, endpoint, mode, key, etag, tmp_path, n=8):
    go = tmp_path / f"go-{mode}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.conformance.objectstore_fixtures", url, endpoint or "", mode, key, etag,
             str(go)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(n)
    ]
    import time

    time.sleep(1.5)  # let every worker import and connect
    go.touch()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


async def test_race_put_if_absent_one_winner(store, store_url, tmp_path):  # noqa: F811
    url, endpoint = store_url
    outs = _race(url, endpoint, "absent", "race/create", "", tmp_path)
    assert outs.count("WIN") == 1 and outs.count("LOSE") == len(outs) - 1


async def test_race_put_if_match_one_winner(store, store_url, tmp_path):  # noqa: F811
    url, endpoint = store_url
    etag = await store.put_if_absent("race/head", b"v0")
    outs = _race(url, endpoint, "match", "race/head", etag, tmp_path)
    assert outs.count("WIN") == 1 and outs.count("LOSE") == len(outs) - 1
    final = await store.get("race/head")
    assert final.data != b"v0"


async def test_local_store_recovers_when_its_directories_are_removed(tmp_path):
    import shutil

    store = open_store(f"file://{tmp_path / 'store'}")
    await store.put_if_absent("a/b", b"1")
    shutil.rmtree(tmp_path / "store")
    await store.put_if_absent("a/b", b"2")
    assert (await store.get("a/b")).data == b"2"
