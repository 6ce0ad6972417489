"""protocols.ccache through the daemon's app: ccache's HTTP storage (protocols.md §6) in its three layouts and
the attacker cases (tokens, malformed keys, traversal, Content-Length lies, corrupt stored blobs)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from micd.store import Digest
from protocols.ccache import NAMESPACE
from tests.protocols.toolcache_support import AUTH, HARD_CAP, corrupt, daemon_client, raw_request

KEY = "4d7akuu12pqg5l3n8scba4tpo4qcidrbg"  # what ccache 4.7.5 sends: 33 characters of base32hex
URL = f"/ccache/{KEY[:2]}/{KEY[2:]}"  # layout=subdirs, the default


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    async with daemon_client(aiohttp_client, tmp_path) as made:
        yield made


async def _get(client, url: str = URL) -> tuple[int, bytes]:
    response = await client.get(url, headers=AUTH)
    return response.status, await response.read()


def _head(method: str, url: str, length: int) -> str:
    return f"{method} {url} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Length: {length}\r\n"


@pytest.mark.parametrize("size", [0, 1, 300_000, 3 << 20])
async def test_put_then_get_and_head_round_trip(client, size):
    data = os.urandom(size)
    assert (await _get(client))[0] == 404  # any non-2xx is a silent miss for ccache
    assert (await client.head(URL, headers=AUTH)).status == 404
    assert (await client.put(URL, data=data, headers=AUTH)).status == 200
    assert await _get(client) == (200, data)
    head = await client.head(URL, headers=AUTH)
    assert head.status == 200 and head.headers["Content-Length"] == str(size)
    record = await client.store.get_record(NAMESPACE, KEY)
    assert record is not None and record.refs == (Digest.of(data),)  # the bytes are in the CAS by sha256


async def test_the_flat_and_subdirs_layouts_name_the_same_entry(client):
    assert (await client.put(f"/ccache/{KEY}", data=b"result", headers=AUTH)).status == 200
    assert await _get(client) == (200, b"result")


async def test_the_bazel_layout_is_served(client):
    url = "/ccache/ac/" + ("0123456789abcdef" * 4)
    assert (await client.put(url, data=b"result", headers=AUTH)).status == 200
    assert await _get(client, url) == (200, b"result")


async def test_a_re_upload_replaces_and_delete_makes_a_miss(client):
    for data in (b"first", b"second"):
        assert (await client.put(URL, data=data, headers=AUTH)).status == 200
    assert await _get(client) == (200, b"second")
    assert (await client.delete(URL, headers=AUTH)).status == 204
    assert (await _get(client))[0] == 404
    assert (await client.head(URL, headers=AUTH)).status == 404
    assert (await client.delete(URL, headers=AUTH)).status == 404
    assert (await client.put(URL, data=b"third", headers=AUTH)).status == 200  # and it can come back
    assert await _get(client) == (200, b"third")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_no_or_wrong_token_is_401_and_stores_nothing(client, headers):
    assert (await client.put(URL, data=b"x", headers=AUTH)).status == 200
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        response = await client.request(method, URL, headers=headers, data=b"y")
        assert response.status == 401, method
    assert await _get(client) == (200, b"x")


@pytest.mark.parametrize(
    "path",
    [
        "..%2F..%2Fcas",
        "..",
        ".",
        "../../cas/x",
        "a%2Fb",
        "4d/7a/kuu",
        "4/d7akuu",
        "abc/def",
        "4D/7AKUU",
        "4d/",
        "/4d",
        "x" * 129,
        "",
        "%00",
        "4d/7a%20k",
    ],
)
async def test_malformed_or_traversing_paths_are_400_and_store_nothing(client, path):
    for method in ("GET", "HEAD", "PUT", "DELETE"):  # raw: an HTTP library would resolve the dot segments
        status = await raw_request(client, _head(method, f"/ccache/{path}", 7), b"payload", hang_up=False)
        assert status.split(b" ")[1] == b"400", (method, path, status)
    assert client.store.disk.entry_count == 0


async def test_a_body_shorter_than_its_content_length_is_refused_and_nothing_stored(client):
    data = os.urandom(4000)
    status = await raw_request(client, _head("PUT", URL, 5000), data)  # then the client hangs up
    assert status == b"" or status.split(b" ")[1] == b"400"
    await asyncio.sleep(0.1)
    assert (await _get(client))[0] == 404
    assert client.store.disk.entry_count == 0


async def test_an_upload_over_the_hard_cap_is_refused_before_its_body(client):
    status = await raw_request(
        client, _head("PUT", URL, HARD_CAP + 1) + "Expect: 100-continue\r\n", hang_up=False
    )
    assert status.split(b" ")[1] == b"507"  # not 100: no byte of the body is sent
    assert (await _get(client))[0] == 404


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
    assert (await client.put(URL, data=data, headers=AUTH)).status == 200  # the re-upload repairs it
    assert await _get(client) == (200, data)


async def test_bytes_two_tools_upload_are_stored_once(client):
    data = os.urandom(5000)
    assert (await client.put(URL, data=data, headers=AUTH)).status == 200
    assert (await client.put("/sccache/a/b/c/" + "0" * 64, data=data, headers=AUTH)).status == 201
    assert (await client.put("/gradle/" + "0" * 32, data=data, headers=AUTH)).status == 200
    assert client.store.disk.entry_count == 4  # one blob, three records
