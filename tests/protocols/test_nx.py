"""protocols.nx through the daemon's app: the Nx remote cache rules of protocols.md §3 and the attacker cases
(tokens, malformed hashes, traversal, Content-Length lies, re-uploads, races, corrupt stored blobs)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from micd.store import Digest
from protocols.nx import NAMESPACE
from tests.protocols.toolcache_support import AUTH, HARD_CAP, corrupt, daemon_client, raw_request

HASH = "16202001392302004422"  # what nx 24 sends: a decimal u64
URL = f"/nx/v1/cache/{HASH}"


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    async with daemon_client(aiohttp_client, tmp_path) as made:
        yield made


async def _get(client, url: str = URL) -> tuple[int, bytes]:
    response = await client.get(url, headers=AUTH)
    return response.status, await response.read()


@pytest.mark.parametrize("size", [0, 1, 300_000, 3 << 20])
async def test_put_then_get_round_trip(client, size):
    data = os.urandom(size)
    assert (await _get(client))[0] == 404
    response = await client.put(URL, data=data, headers=AUTH)
    assert response.status == 200  # never 202: nx 24 fails the task on it
    status, body = await _get(client)
    assert status == 200 and body == data
    record = await client.store.get_record(NAMESPACE, HASH)
    assert record is not None and record.refs == (Digest.of(data),)  # the bytes are in the CAS by sha256


async def test_a_re_upload_is_409_and_keeps_the_first(client):
    assert (await client.put(URL, data=b"first", headers=AUTH)).status == 200
    again = await client.put(URL, data=b"second", headers=AUTH)
    assert again.status == 409
    assert await _get(client) == (200, b"first")


async def test_same_bytes_under_two_hashes_are_stored_once(client):
    data = os.urandom(5000)
    for key in ("1", "2"):
        assert (await client.put(f"/nx/v1/cache/{key}", data=data, headers=AUTH)).status == 200
    assert client.store.disk.entry_count == 3  # one blob, two records


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_no_or_wrong_token_is_401_text_plain_exactly(client, headers):
    for method in ("GET", "PUT"):
        response = await client.request(method, URL, headers=headers, data=b"x")
        assert response.status == 401
        assert response.headers["Content-Type"] == "text/plain"  # nx compares it verbatim
        assert "token" in await response.text()  # nx shows the body to the user
    assert await client.store.get_record(NAMESPACE, HASH) is None


@pytest.mark.parametrize(
    "key",
    ["..%2F..%2Fcas", "..", ".", "../../cas/x", "a%2Fb", "a%20b", "%00", "x" * 300, "", "%C3%A9", "a/b"],
)
async def test_malformed_or_traversing_hashes_are_400_and_store_nothing(client, key):
    for method in ("GET", "PUT"):  # raw: an HTTP library would resolve the dot segments before sending
        head = f"{method} /nx/v1/cache/{key} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\n"
        status = await raw_request(client, head + "Content-Length: 7\r\n", b"payload", hang_up=False)
        assert status.split(b" ")[1] == b"400", (method, key, status)
    assert client.store.disk.entry_count == 0


async def test_a_body_shorter_than_its_content_length_is_refused_and_nothing_stored(client):
    data = os.urandom(4000)
    head = f"PUT {URL} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Length: 5000\r\n"
    status = await raw_request(client, head, data)  # then the client hangs up, 1000 bytes short
    assert status == b"" or status.split(b" ")[1] == b"400"
    await asyncio.sleep(0.1)
    assert await _get(client) == (404, b"no such artifact\n")
    assert await client.store.find_missing([Digest.of(data)]) == [Digest.of(data)]
    assert client.store.disk.entry_count == 0


async def test_a_body_longer_than_its_content_length_never_stores_more(client):
    data = os.urandom(100)
    head = f"PUT {URL} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Length: 60\r\n"
    # The extra 40 bytes are a malformed second request: aiohttp answers 400 for the connection at once.
    status = await raw_request(client, head, data, hang_up=False)
    assert status.split(b" ")[1] in (b"200", b"400")
    assert await _get(client) in ((404, b"no such artifact\n"), (200, data[:60]))


async def test_an_upload_over_the_hard_cap_is_refused_before_its_body(client):
    head = (
        f"PUT {URL} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Length: {HARD_CAP + 1}\r\nExpect: 100-continue\r\n"
    )
    status = await raw_request(client, head, hang_up=False)
    assert status.split(b" ")[1] == b"507"  # not 100: no byte of the body is sent
    assert await _get(client) == (404, b"no such artifact\n")


async def test_a_chunked_upload_is_accepted(client):
    data = os.urandom(200_000)

    async def body():
        for start in range(0, len(data), 7000):
            yield data[start : start + 7000]

    assert (await client.put(URL, data=body(), headers=AUTH)).status == 200
    assert await _get(client) == (200, data)


async def test_concurrent_first_uploads_of_one_hash_store_one_whole_body(client):
    bodies = [os.urandom(100_000) for _ in range(6)]
    responses = await asyncio.gather(*(client.put(URL, data=body, headers=AUTH) for body in bodies))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 409} and 200 in statuses
    status, got = await _get(client)
    assert status == 200 and got in bodies


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
