"""The registry of resumable ByteStream uploads: bounded in count and age, cancelled uploads store nothing."""

from __future__ import annotations

import asyncio
import os

import pytest

from micd.errors import BadRequest
from micd.store import Digest
from protocols.bazel_reapi.common import UploadBusy
from protocols.bazel_reapi.resource import ResourceName
from protocols.bazel_reapi.uploads import Uploads
from tests.protocols.bazel_support import new_store


def _name(uuid: str, size: int = 1000) -> tuple[ResourceName, bytes]:
    data = os.urandom(size)
    return ResourceName("", Digest.of(data), None, uuid), data


async def _pause(uploads: Uploads, name: ResourceName, data: bytes) -> None:
    upload = uploads.attach(name, 0)
    await upload.feed(data[:10])
    uploads.detach(upload)


async def test_paused_uploads_are_bounded_in_count():
    store = new_store()
    uploads = Uploads(store, max_paused=2)
    names = [_name(f"u{i}") for i in range(3)]
    for name, data in names:
        await _pause(uploads, name, data)
        await asyncio.sleep(0.001)
    assert uploads.get(names[0][0]) is None  # the oldest went first
    assert uploads.get(names[1][0]).committed == 10 and uploads.get(names[2][0]).committed == 10
    uploads.close()
    await asyncio.sleep(0)
    assert await store.find_missing([n.digest for n, _ in names]) == [n.digest for n, _ in names]


async def test_paused_uploads_expire_by_age():
    uploads = Uploads(new_store(), max_age=0.05)
    name, data = _name("old")
    await _pause(uploads, name, data)
    assert uploads.get(name) is not None
    await asyncio.sleep(0.1)
    assert uploads.get(name) is None
    uploads.close()


async def test_abandoned_uploads_expire_without_another_call():
    """An upload whose client never returns is cancelled at max_age even if no other ByteStream call comes:
    it holds a temp file and a task until then."""
    uploads = Uploads(new_store(), max_age=0.05)
    name, data = _name("abandoned")
    upload = uploads.attach(name, 0)
    await upload.feed(data[:10])
    uploads.detach(upload)
    await asyncio.sleep(0.2)  # no call on `uploads` in between
    assert upload._task.done()
    assert uploads._uploads == {}


async def test_attach_rules():
    store = new_store()
    uploads = Uploads(store)
    name, data = _name("x")
    upload = uploads.attach(name, 0)
    with pytest.raises(UploadBusy):
        uploads.attach(name, 0)
    await upload.feed(data[:100])
    uploads.detach(upload)
    with pytest.raises(BadRequest):
        uploads.attach(name, 50)  # not where the upload stands
    resumed = uploads.attach(name, 100)
    await resumed.feed(data[100:])
    await resumed.finish()
    uploads.done(resumed)
    assert await store.get_bytes(name.digest) == data
    fresh, _ = _name("y")
    with pytest.raises(BadRequest):
        uploads.attach(fresh, 5)  # nothing to resume
    uploads.close()
