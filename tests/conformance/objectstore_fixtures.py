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

__all__ = ["s3_atomic", "store_url"]


@pytest.fixture(scope="session")
def s3_atomic_server():
    """A moto server with atomic conditional writes (see serial_moto.py), for race tests."""
    from tests.fixtures.s3 import S3Server

    server = S3Server()
    server.start = lambda: _start_serial(server)  # type: ignore[method-assign]
    server.start()
    yield server
    server.stop()


def _start_serial(server) -> None:
    import socket
    import subprocess
    from pathlib import Path

    from tests.fixtures.s3 import AWS_ENV

    server.process = subprocess.Popen(
        [sys.executable, "-m", "tests.conformance.serial_moto", str(server.port)],
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, **AWS_ENV},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("serial moto server did not start")


@pytest.fixture
def s3_atomic(s3_atomic_server, s3_env):
    """(endpoint, fresh bucket) on the atomic server."""
    return s3_atomic_server.endpoint_url, s3_atomic_server.create_bucket()


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    """(url, endpoint) for a fresh, empty store of each kind (S3: moto with atomic conditional writes)."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}", None
    endpoint, bucket = request.getfixturevalue("s3_atomic")
    return f"s3://{bucket}/p-{uuid.uuid4().hex[:6]}", endpoint


async def _race(url: str, endpoint: str | None, mode: str, key: str, etag: str, go: str) -> str:
    store = open_store(url, s3_endpoint_url=endpoint or None)
    try:
        await store.list("warm")  # open the connection before the start line
        while not os.path.exists(go):
            await asyncio.sleep(0.002)
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
