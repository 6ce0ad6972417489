"""protocols.sccache through the daemon's app: the WebDAV subset of protocols.md §6 as sccache 0.16 drives it
(the `.sccache_check` probe, PROPFIND/MKCOL on virtual collections) and the attacker cases (tokens, malformed
paths, traversal, Content-Length lies, corrupt stored blobs)."""

from __future__ import annotations

import asyncio
import base64
import os
import xml.etree.ElementTree as ET

import aiohttp
import pytest

from micd.store import Digest
from tests.protocols.toolcache_support import AUTH, HARD_CAP, TOKEN, corrupt, daemon_client, raw_request

KEY = "3c2f" + "0" * 60
DIR = "/sccache/3/c/2/"
URL = DIR + KEY
PROPFIND_BODY = '<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
DAV = "{DAV:}"


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    async with daemon_client(aiohttp_client, tmp_path) as made:
        yield made


async def _get(client, url: str = URL) -> tuple[int, bytes]:
    response = await client.get(url, headers=AUTH)
    return response.status, await response.read()


async def _propfind(client, url: str) -> tuple[int, ET.Element | None]:
    response = await client.request(
        "PROPFIND", url, data=PROPFIND_BODY, headers={**AUTH, "Depth": "0", "Content-Type": "application/xml"}
    )
    text = await response.text()
    return response.status, ET.fromstring(text) if response.status == 207 else None


def _head(method: str, url: str, length: int) -> str:
    return f"{method} {url} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Length: {length}\r\n"


async def test_the_start_up_probe_and_a_compile_as_sccache_sends_them(client):
    assert (await _get(client, "/sccache/.sccache_check"))[0] == 404
    status, root = await _propfind(client, "/sccache/")
    assert status == 207
    assert root.find(f"{DAV}response/{DAV}propstat/{DAV}prop/{DAV}resourcetype/{DAV}collection") is not None
    assert root.find(f"{DAV}response/{DAV}propstat/{DAV}prop/{DAV}getlastmodified").text
    assert root.find(f"{DAV}response/{DAV}propstat/{DAV}status").text == "HTTP/1.1 200 OK"
    assert (await client.put("/sccache/.sccache_check", data=b"Hello, World!", headers=AUTH)).status == 201
    assert await _get(client, "/sccache/.sccache_check") == (200, b"Hello, World!")

    assert (await _get(client))[0] == 404
    assert (await _propfind(client, DIR))[0] == 207  # every collection exists
    assert (await client.request("MKCOL", DIR, headers=AUTH)).status == 201
    data = os.urandom(300_000)
    assert (await client.put(URL, data=data, headers=AUTH)).status == 201
    assert await _get(client) == (200, data)
    status, file = await _propfind(client, URL)
    assert status == 207 and file.find(f".//{DAV}getcontentlength").text == str(len(data))
    assert file.find(f".//{DAV}resourcetype/{DAV}collection") is None


@pytest.mark.parametrize("size", [0, 1, 3 << 20])
async def test_put_then_get_round_trip_and_re_upload_replaces(client, size):
    data = os.urandom(size)
    for body in (b"older", data):
        assert (await client.put(URL, data=body, headers=AUTH)).status == 201
    assert await _get(client) == (200, data)
    assert (await _propfind(client, "/sccache/3/c/2/" + "f" * 64))[0] == 404  # a missing file


async def test_basic_auth_with_the_token_as_password_works_too(client):
    basic = {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()}
    assert (await client.put(URL, data=b"x", headers=basic)).status == 201
    assert (await client.get(URL, headers=basic)).status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_no_or_wrong_token_is_401_and_stores_nothing(client, headers):
    for method in ("GET", "PUT", "PROPFIND", "MKCOL"):
        response = await client.request(method, URL, headers=headers, data=b"y")
        assert response.status == 401, method
    assert (await _get(client))[0] == 404
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize(
    "path",
    ["..%2F..%2Fcas", "..", "a/../b", "./a", "a%2F..%2F..%2Fx", "a//b", "a%20b", "%00", "é", "a/" * 17 + "b"],
)
async def test_malformed_or_traversing_paths_are_400_and_store_nothing(client, path):
    for method in ("GET", "PUT", "PROPFIND", "MKCOL"):  # raw: an HTTP library would resolve the dot segments
        status = await raw_request(client, _head(method, f"/sccache/{path}", 7), b"payload", hang_up=False)
        assert status.split(b" ")[1] == b"400", (method, path, status)
    assert client.store.disk.entry_count == 0


async def test_a_collection_has_no_body(client):
    assert (await client.put(DIR, data=b"x", headers=AUTH)).status == 400
    assert (await _get(client, DIR))[0] == 400


async def test_an_oversized_propfind_body_is_refused(client):
    response = await client.request("PROPFIND", DIR, data=b"x" * (65 << 10), headers=AUTH)
    assert response.status == 400


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
    assert (await client.put(URL, data=data, headers=AUTH)).status == 201
    corrupt(client.store, Digest.of(data))
    try:
        status, body = await _get(client)
    except aiohttp.ClientPayloadError:  # found mid-stream: the connection is cut, the body incomplete
        return
    assert status == 404 and body != data
    assert (await client.put(URL, data=data, headers=AUTH)).status == 201  # the re-upload repairs it
    assert await _get(client) == (200, data)
