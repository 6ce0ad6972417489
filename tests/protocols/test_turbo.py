"""protocols.turbo through the daemon's app: the Turborepo remote cache rules of protocols.md §4 (status,
artifacts with their tag and duration, teams, events, batch query) and the attacker cases."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest

from micd.store import Digest
from protocols.turbo import MAX_JSON_BODY
from tests.protocols.toolcache_support import AUTH, HARD_CAP, corrupt, daemon_client, raw_request

HASH = "f41f2b6b888dae68"  # what turbo 2.11 sends: 16 hex digits
URL = f"/turbo/v8/artifacts/{HASH}?slug=team"
SIGNED = {"x-artifact-tag": "pSMsFcOZRbOeTUZo9yOOSMIdk2XbEBtYNKHFLXxdTwI=", "x-artifact-duration": "2030"}


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    async with daemon_client(aiohttp_client, tmp_path) as made:
        yield made


async def _get(client, url: str = URL) -> tuple[int, bytes]:
    response = await client.get(url, headers=AUTH)
    return response.status, await response.read()


async def test_status_is_enabled(client):
    response = await client.get("/turbo/v8/artifacts/status?slug=team", headers=AUTH)
    assert response.status == 200 and await response.json() == {"status": "enabled"}


@pytest.mark.parametrize("size", [0, 1, 300_000, 3 << 20])
async def test_put_get_head_round_trip_with_tag_and_duration(client, size):
    data = os.urandom(size)
    assert (await _get(client))[0] == 404
    assert (await client.head(URL, headers=AUTH)).status == 404
    response = await client.put(URL, data=data, headers={**AUTH, **SIGNED, "x-artifact-sha": "9a69" * 10})
    assert response.status == 200 and await response.json() == {"urls": [f"team/{HASH}"]}
    response = await client.get(URL, headers=AUTH)
    assert response.status == 200 and await response.read() == data
    assert {k: response.headers[k] for k in SIGNED} == SIGNED  # turbo ignores a signed hit without its tag
    head = await client.head(URL, headers=AUTH)
    assert head.status == 200 and head.headers["Content-Length"] == str(size)
    assert {k: head.headers[k] for k in SIGNED} == SIGNED


async def test_an_unsigned_artifact_has_no_tag(client):
    assert (await client.put(URL, data=b"plain", headers=AUTH)).status == 200
    response = await client.get(URL, headers=AUTH)
    assert await response.read() == b"plain" and "x-artifact-tag" not in response.headers


async def test_a_re_upload_replaces_the_artifact_and_its_tag(client):
    assert (await client.put(URL, data=b"first", headers={**AUTH, **SIGNED})).status == 200
    other = {"x-artifact-tag": "b3RoZXI="}
    assert (await client.put(URL, data=b"second", headers={**AUTH, **other})).status == 200
    response = await client.get(URL, headers=AUTH)
    assert await response.read() == b"second" and response.headers["x-artifact-tag"] == "b3RoZXI="
    assert "x-artifact-duration" not in response.headers


async def test_each_team_is_its_own_namespace_and_team_id_works_too(client):
    base = f"/turbo/v8/artifacts/{HASH}"
    assert (await client.put(f"{base}?slug=a", data=b"for a", headers=AUTH)).status == 200
    assert (await client.put(f"{base}?teamId=team_b", data=b"for b", headers=AUTH)).status == 200
    assert await _get(client, f"{base}?slug=a") == (200, b"for a")
    assert await _get(client, f"{base}?teamId=a") == (200, b"for a")  # one team, either parameter
    assert await _get(client, f"{base}?slug=team_b") == (200, b"for b")
    assert (await _get(client, f"{base}?slug=c"))[0] == 404
    assert await _get(client, f"{base}?slug=a&teamId=a") == (200, b"for a")


@pytest.mark.parametrize(
    "query",
    ["", "?slug=", "?teamId=", "?slug=a&teamId=b", "?slug=..", "?slug=a%2Fb", "?slug=a%20b", "?slug=%00"],
)
async def test_artifact_requests_without_one_valid_team_are_400_and_store_nothing(client, query):
    url = f"/turbo/v8/artifacts/{HASH}{query}"
    for method in ("PUT", "GET", "HEAD"):
        response = await client.request(method, url, headers=AUTH, data=b"payload")
        assert response.status == 400, (method, query)
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize(
    "key", ["..%2F..%2Fnx", "..", ".", "../../nx/v1/cache/1", "a%2Fb", "%00", "x" * 300, ""]
)
async def test_malformed_or_traversing_hashes_are_400_and_store_nothing(client, key):
    for method in (
        "GET",
        "HEAD",
        "PUT",
    ):  # raw: an HTTP library would resolve the dot segments before sending
        head = f"{method} /turbo/v8/artifacts/{key}?slug=team HTTP/1.1\r\nHost: micd\r\n"
        head += f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 7\r\n"
        status = await raw_request(client, head, b"payload", hang_up=False)
        assert status.split(b" ")[1] == b"400", (method, key, status)
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize(
    "headers",
    [{"x-artifact-tag": "has space"}, {"x-artifact-tag": "x" * 1025}, {"x-artifact-duration": "-1"}],
)
async def test_malformed_artifact_headers_are_400_and_store_nothing(client, headers):
    assert (await client.put(URL, data=b"payload", headers={**AUTH, **headers})).status == 400
    assert client.store.disk.entry_count == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_no_or_wrong_token_is_401_and_stores_nothing(client, headers):
    for method, url in (("PUT", URL), ("GET", URL), ("HEAD", URL), ("POST", "/turbo/v8/artifacts/events")):
        assert (await client.request(method, url, headers=headers, data=b"x")).status == 401
    assert (await client.get("/turbo/v8/artifacts/status", headers=headers)).status == 401
    assert client.store.disk.entry_count == 0


async def test_a_body_shorter_than_its_content_length_is_refused_and_nothing_stored(client):
    data = os.urandom(4000)
    head = f"PUT {URL} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Length: 5000\r\n"
    status = await raw_request(client, head, data)  # then the client hangs up, 1000 bytes short
    assert status == b"" or status.split(b" ")[1] == b"400"
    await asyncio.sleep(0.1)
    assert (await _get(client))[0] == 404
    assert client.store.disk.entry_count == 0


async def test_an_upload_over_the_hard_cap_is_refused_before_its_body(client):
    head = (
        f"PUT {URL} HTTP/1.1\r\nHost: micd\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Length: {HARD_CAP + 1}\r\nExpect: 100-continue\r\n"
    )
    status = await raw_request(client, head, hang_up=False)
    assert status.split(b" ")[1] == b"507"  # not 100: no byte of the body is sent


async def test_events_are_accepted_and_not_stored(client):
    events = [{"sessionId": "s", "source": "LOCAL", "event": "HIT", "hash": HASH, "duration": 5}]
    response = await client.post("/turbo/v8/artifacts/events?slug=team", json=events, headers=AUTH)
    assert response.status == 200 and await response.json() == {}
    assert client.store.disk.entry_count == 0
    too_big = b"[" + b" " * MAX_JSON_BODY + b"]"
    assert (await client.post("/turbo/v8/artifacts/events", data=too_big, headers=AUTH)).status == 400


async def test_batch_query_reports_size_duration_and_tag(client):
    assert (await client.put(URL, data=b"12345", headers={**AUTH, **SIGNED})).status == 200
    body = {"hashes": [HASH, "0000000000000000"]}
    response = await client.post("/turbo/v8/artifacts?slug=team", json=body, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {
        HASH: {"size": 5, "taskDurationMs": 2030, "tag": SIGNED["x-artifact-tag"]},
        "0000000000000000": None,
    }
    for bad in (
        b"{",
        b"[]",
        b'{"hashes": "x"}',
        json.dumps({"hashes": ["a"] * 1001}).encode(),
        b'{"hashes":["../x"]}',
    ):
        response = await client.post("/turbo/v8/artifacts?slug=team", data=bad, headers=AUTH)
        assert response.status == 400, bad
    assert (await client.post("/turbo/v8/artifacts", json=body, headers=AUTH)).status == 400  # no team


async def test_concurrent_uploads_of_one_hash_leave_one_whole_body(client):
    bodies = [os.urandom(100_000) for _ in range(6)]
    responses = await asyncio.gather(*(client.put(URL, data=body, headers=AUTH) for body in bodies))
    assert [r.status for r in responses] == [200] * 6
    status, got = await _get(client)
    assert status == 200 and got in bodies


@pytest.mark.parametrize("size", [5000, 3 << 20])  # verified whole before serving / while streaming
async def test_a_corrupt_stored_blob_is_never_served_as_wrong_bytes(client, size):
    data = os.urandom(size)
    assert (await client.put(URL, data=data, headers={**AUTH, **SIGNED})).status == 200
    corrupt(client.store, Digest.of(data))
    try:
        status, body = await _get(client)
    except aiohttp.ClientPayloadError:  # found mid-stream: the connection is cut, the body incomplete
        return
    assert status == 404 and body != data
