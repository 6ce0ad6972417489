"""protocols.gradle through the daemon's app: the Gradle HTTP build cache rules of protocols.md §2 and the
attacker cases (tokens, malformed keys, traversal, Content-Length lies, oversized entries, corrupt blobs)."""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import pytest

from micd.store import Digest
from protocols import gradle
from protocols.gradle import ARTIFACT_V1, MAX_ENTRY_SIZE, NAMESPACE
from tests.protocols.toolcache_support import TOKEN, corrupt, daemon_client, raw_request

KEY = "4c49b1f5803eeaaada176f3b0558097b"  # what Gradle 4.4.1 sends: 32 hex (MD5)
URL = f"/gradle/{KEY}"
BASIC = "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()  # Gradle's credentials, pre-emptive
AUTH = {"Authorization": BASIC}
V2 = "application/vnd.gradle.build-cache-artifact.v2"


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    async with daemon_client(aiohttp_client, tmp_path) as made:
        yield made


async def _get(client, url: str = URL) -> tuple[int, bytes]:
    response = await client.get(url, headers={**AUTH, "Accept": f"{ARTIFACT_V1}, */*"})
    return response.status, await response.read()


def _head(method: str, url: str, length: int, extra: str = "") -> str:
    return f"{method} {url} HTTP/1.1\r\nHost: micd\r\nAuthorization: {BASIC}\r\nContent-Length: {length}\r\n{extra}"


@pytest.mark.parametrize("size", [0, 1, 300_000, 3 << 20])
@pytest.mark.parametrize("content_type", [ARTIFACT_V1, V2])
async def test_put_then_get_round_trip_keeps_the_content_type(client, size, content_type):
    data = os.urandom(size)
    assert (await _get(client))[0] == 404  # a miss is a 404: Gradle keeps the remote cache on
    response = await client.put(URL, data=data, headers={**AUTH, "Content-Type": content_type})
    assert response.status == 200
    response = await client.get(URL, headers=AUTH)
    assert response.status == 200 and await response.read() == data
    assert response.headers["Content-Type"] == content_type
    record = await client.store.get_record(NAMESPACE, KEY)
    assert record is not None and record.refs == (Digest.of(data),)  # the bytes are in the CAS by sha256


async def test_a_re_upload_replaces_the_entry(client):
    for data in (b"first", b"second"):
        assert (await client.put(URL, data=data, headers=AUTH)).status == 200
    assert await _get(client) == (200, b"second")


async def test_a_bearer_token_works_too(client):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.put(URL, data=b"x", headers=bearer)).status == 200
    assert (await client.get(URL, headers=bearer)).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"u:wrong").decode()},
        {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()},  # token as user
    ],
)
async def test_no_or_wrong_token_is_401_and_stores_nothing(client, headers):
    for method in ("GET", "PUT"):
        response = await client.request(method, URL, headers=headers, data=b"x")
        assert response.status == 401
    assert await client.store.get_record(NAMESPACE, KEY) is None
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize(
    "key",
    ["..%2F..%2Fcas", "..", ".", "../../cas/x", "a%2Fb", "ABCD", "abc%20", "%00", "a" * 129, "", "x1", "a/b"],
)
async def test_malformed_or_traversing_keys_are_400_and_store_nothing(client, key):
    for method in ("GET", "PUT"):  # raw: an HTTP library would resolve the dot segments before sending
        status = await raw_request(client, _head(method, f"/gradle/{key}", 7), b"payload", hang_up=False)
        assert status.split(b" ")[1] == b"400", (method, key, status)
    assert client.store.disk.entry_count == 0


async def test_a_foreign_content_type_is_refused(client):
    response = await client.put(URL, data=b"x", headers={**AUTH, "Content-Type": "text/html"})
    assert response.status == 400
    assert await _get(client) == (404, b"no such entry\n")


async def test_a_body_shorter_than_its_content_length_is_refused_and_nothing_stored(client):
    data = os.urandom(4000)
    status = await raw_request(client, _head("PUT", URL, 5000), data)  # then the client hangs up
    assert status == b"" or status.split(b" ")[1] == b"400"
    await asyncio.sleep(0.1)
    assert await _get(client) == (404, b"no such entry\n")
    assert client.store.disk.entry_count == 0


async def test_an_oversized_entry_is_413_from_its_content_length_before_any_body(client):
    head = _head("PUT", URL, MAX_ENTRY_SIZE + 1, "Expect: 100-continue\r\n")
    status = await raw_request(client, head, hang_up=False)
    assert status.split(b" ")[1] == b"413"  # not 100: no byte of the body is sent
    status = await raw_request(client, _head("PUT", URL, MAX_ENTRY_SIZE + 1), b"x" * 1000, hang_up=False)
    assert status.split(b" ")[1] == b"413"  # without Expect too: decided before reading
    assert await _get(client) == (404, b"no such entry\n")


async def test_a_fitting_entry_gets_100_continue_then_200(client):
    head = _head("PUT", URL, 5, "Expect: 100-continue\r\n")
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.encode() + b"\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
        await reader.readline()
        writer.write(b"hello")
        assert (await asyncio.wait_for(reader.readline(), 10)).split(b" ")[1] == b"200"
    finally:
        writer.close()
    assert await _get(client) == (200, b"hello")


async def test_an_oversized_chunked_entry_is_413_and_nothing_stored(client, monkeypatch):
    monkeypatch.setattr(gradle, "MAX_ENTRY_SIZE", 100_000)

    async def body():
        for _ in range(20):
            yield os.urandom(10_000)

    response = await client.put(URL, data=body(), headers=AUTH)
    assert response.status == 413
    assert await _get(client) == (404, b"no such entry\n")
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize("size", [5000, 3 << 20])  # verified whole before serving / while streaming
async def test_a_corrupt_stored_blob_is_never_served_as_wrong_bytes(client, size):
    data = os.urandom(size)
    assert (await client.put(URL, data=data, headers=AUTH)).status == 200
    corrupt(client.store, Digest.of(data))
    try:
        status, body = await _get(client)
    except aiohttp.ClientPayloadError:  # found mid-stream: the connection is cut, the body incomplete
        return
    assert status == 404 and body != data
    assert (await client.put(URL, data=data, headers=AUTH)).status == 200  # a miss: the re-upload repairs it
    assert await _get(client) == (200, data)


async def test_a_body_longer_than_its_content_length_never_stores_more(client):
    data = os.urandom(100)
    # The extra 40 bytes are a malformed second request: aiohttp answers 400 for the connection at once.
    status = await raw_request(client, _head("PUT", URL, 60), data, hang_up=False)
    assert status.split(b" ")[1] in (b"200", b"400")
    assert await _get(client) in ((404, b"no such entry\n"), (200, data[:60]))
