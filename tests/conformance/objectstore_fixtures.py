"""Fixtures for the ObjectStore conformance suite: one parametrized `store_url` per implementation.

Also runnable as a race worker: `python -m tests.conformance.objectstore_fixtures URL MODE KEY ETAG GO_FILE`
waits until GO_FILE exists, tries one conditional write and prints WIN or LOSE.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import pytest

from mic.errors import PreconditionFailed
from mic.objectstore import open_store

__all__ = ["store_url"]


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    """(url, endpoint) for a fresh, empty store of each kind."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}", None
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/p-{uuid.uuid4().hex[:6]}", endpoint


async def _race(url: str, endpoint: str | None, mode: str, key: str, etag: str, go: str) -> str:
    store = open_store(url, s3_endpoint_url=endpoint or None)
    try:
        await store.list("warm")  # open the connection before the start line
        while not os.path.exists(go):
            time.sleep(0.002)
        data = f"{os.getpid()}".encode()
        try:
            if mode == "absent":
                await store.put_if_absent(key, data)
            else:
                await store.put_if_match(key, data, etag)
        except PreconditionFailed:
            return "LOSE"
        return "WIN"
    finally:
        await store.close()


if __name__ == "__main__":
    url, endpoint, mode, key, etag, go = sys.argv[1:7]
    print(asyncio.run(_race(url, endpoint, mode, key, etag, go)), flush=True)
