"""micd.app, in process: auth on every route, daemon endpoints, logs, gRPC.

Routes are enumerated from the router, so new endpoints are covered automatically. Also: log
separation, and the gRPC server's interceptor and message limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from micd.app import (
    ACTIVITY,
    METRICS,
    SERVER_LOGGER,
    STORE,
    Activity,
    LogLimiter,
    create_app,
    create_grpc_server,
)
from micd.config import load_config
from micd.metrics import Metrics
from micd.store import Digest
from micd.tiers.memory import MemoryTier
from tests.micd.helpers import wait_until

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_PLACEHOLDER = re.compile(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})+))?\}")
_CANDIDATES = ("a" * 64, "sha256", "1", "main", "x")


class _Store:
    """The surface the app needs from the tiered store, over a memory tier."""

    def __init__(self) -> None:
        self.memory = MemoryTier()
        self.tools: list[str] = []

    def for_tool(self, tool: str, namespaces: tuple[str, ...] = ()) -> MemoryTier:
        self.tools.append(tool)
        return self.memory

    def stats(self) -> dict:
        return {
            "memory": {"used_bytes": self.memory.used},
            "queue": {"depth": 7},
            "s3": {"state": "off", "up": False, "error-count": 2},
        }


@pytest.fixture
def config(tmp_path: Path):
    return load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})


@pytest.fixture
def app(config) -> web.Application:
    return create_app(_Store(), config, token=TOKEN, metrics=Metrics(), activity=Activity())


def _concrete_paths(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) for every route, sub-applications included, placeholders filled with a value their
    pattern accepts."""
    out = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a frontend's sub-application under its prefix
            out += _concrete_paths(info["app"])  # its resources carry the prefix
            continue
        template = info.get("path") or info.get("formatter")
        assert template, f"cannot enumerate resource {resource!r}"

        def fill(match: re.Match, template: str = template) -> str:
            pattern = match.group(2) or r"[^{}/]+"
            for candidate in _CANDIDATES:
                if re.fullmatch(pattern, candidate):
                    return candidate
            raise AssertionError(f"no sample value for {match.group(0)} in {template}")

        path = _PLACEHOLDER.sub(fill, template)
        if "pattern" in info:  # the filled path must reach this very route, not fall through to a 404
            assert info["pattern"].fullmatch(path), (template, path)
        for route in resource:
            out.append(("GET" if route.method == "*" else route.method, path))
    return sorted(set(out))


def test_routes_are_enumerated(app):
    paths = _concrete_paths(app)
    assert ("GET", "/healthz") in paths and ("GET", "/metrics") in paths and ("GET", "/stats") in paths
    assert any(path.startswith("/cas/") for _, path in paths)


async def test_every_endpoint_but_healthz_needs_the_token(aiohttp_client, app):
    client = await aiohttp_client(app)
    checked = 0
    for method, path in _concrete_paths(app):
        if path == "/healthz":
            assert (await client.request(method, path)).status == 200
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}):
            response = await client.request(method, path, headers=headers, data=b"")
            assert response.status == 401, (method, path, headers)
        response = await client.request(method, path, headers=AUTH, data=b"")
        assert response.status != 401, (method, path)  # the route itself was reached
        checked += 1
    assert checked >= 5
    assert (await client.get("/not/a/route")).status == 401


async def test_metrics_in_prometheus_format(aiohttp_client, app):
    client = await aiohttp_client(app)
    app[METRICS].observe(tool="cas", tier="memory", event="hit", nbytes=10, seconds=0.001)
    response = await client.get("/metrics", headers=AUTH)
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'micd_requests_total{tool="cas",tier="memory",event="hit"} 1' in text
    assert "micd_store_queue_depth 7" in text  # upload queue depth, from the store's stats
    assert "micd_store_s3_up 0.0" in text and "micd_store_s3_error_count 2.0" in text  # names sanitized
    assert "micd_uptime_seconds" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(
            r"[a-zA-Z_][a-zA-Z0-9_]*(\{[^}]*\})? -?[0-9.e+]+", line
        ), line


async def test_stats_json(aiohttp_client, app):
    client = await aiohttp_client(app)
    data = await (await client.get("/stats", headers=AUTH)).json()
    assert data["store"]["queue"]["depth"] == 7
    assert set(data) >= {"pid", "uptime_seconds", "store", "metrics"}


async def test_generic_cas_is_mounted_for_its_own_tool(aiohttp_client, config):
    store = _Store()
    client = await aiohttp_client(create_app(store, config, token=TOKEN, metrics=Metrics()))
    data = b"mounted"
    digest = Digest.of(data)
    assert (await client.put(f"/cas/sha256/{digest.hex}/{len(data)}", data=data, headers=AUTH)).status == 201
    assert "cas" in store.tools


async def test_client_errors_go_to_the_access_log_only(aiohttp_client, app, caplog):
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="micd"):
        await client.get("/stats")
        await client.get(f"/cas/sha256/{'A' * 64}/1", headers=AUTH)
    access = [r for r in caplog.records if r.name == "micd.access"]
    errors = [r for r in caplog.records if r.name == "micd" and r.levelno >= logging.ERROR]
    assert [r.getMessage().rsplit(" ", 1)[1] for r in access] == ["401", "400"]
    assert errors == []


async def test_activity_counts_requests_in_flight(aiohttp_client, config):
    activity = Activity()
    client = await aiohttp_client(
        create_app(_Store(), config, token=TOKEN, metrics=Metrics(), activity=activity)
    )
    before = activity.last
    await client.get("/healthz")
    assert activity.last == before  # a readiness probe is not activity
    await client.get("/stats", headers=AUTH)
    assert activity.last > before and activity.in_flight == 0
    await client.get("/stats")  # even a rejected request shows someone is using the daemon
    assert activity.in_flight == 0


async def test_grpc_server_checks_token_and_allows_large_messages(config):
    activity = Activity()
    quiet_since = activity.last
    server = create_grpc_server(_Store(), config, token=TOKEN, activity=activity).server

    async def echo(request: bytes, context) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_unary("/test.Echo/Echo")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"x")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert activity.last == quiet_since  # a call without the token is not activity
            big = b"\x5a" * (20 << 20)  # Bazel batches are ≤ 4 MiB, but others send more; we allow ≥ 16 MiB
            assert await call(big, metadata=(("authorization", f"Bearer {TOKEN}"),)) == big
    finally:
        await server.stop(None)


async def test_grpc_calls_in_flight_are_not_idleness(config):
    activity = Activity()
    server = create_grpc_server(_Store(), config, token=TOKEN, activity=activity).server
    release = asyncio.Event()

    async def slow(request: bytes, context) -> bytes:
        await release.wait()
        return request

    async def slow_stream(request: bytes, context):
        yield request
        await release.wait()
        yield request

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Slow",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(slow),
                    "Stream": grpc.unary_stream_rpc_method_handler(slow_stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = asyncio.ensure_future(channel.unary_unary("/test.Slow/Unary")(b"u", metadata=metadata))
            stream = channel.unary_stream("/test.Slow/Stream")(b"s", metadata=metadata)
            assert await stream.read() == b"s"
            await wait_until(lambda: activity.in_flight == 2)
            assert activity.idle_for() == 0.0
            release.set()
            assert await unary == b"u"
            assert await stream.read() == b"s"
            assert await stream.read() == grpc.aio.EOF
        await wait_until(lambda: activity.in_flight == 0)
    finally:
        await server.stop(None)


async def test_a_flood_of_bad_tokens_cannot_fill_the_access_log(aiohttp_client, app, tmp_path):
    """Any local user can send bad tokens: the access log stays bounded, and says how much it left out."""
    path = tmp_path / "access.log"
    handler = logging.FileHandler(path)
    access = logging.getLogger("micd.access")
    access.addHandler(handler)
    try:
        with _level(access, logging.INFO):
            client = await aiohttp_client(app)
            for _ in range(FLOOD):
                assert (await client.get("/stats", headers={"Authorization": "Bearer wrong"})).status == 401
            await client.close()  # the app's cleanup writes the pending summary
    finally:
        access.removeHandler(handler)
        handler.close()
    lines = path.read_text().splitlines()
    logged = [line for line in lines if line.endswith(" 401")]
    suppressed = [int(m[1]) for line in lines if (m := re.search(r"(\d+) similar requests suppressed", line))]
    assert path.stat().st_size < 8 << 10, f"{len(lines)} lines"
    assert suppressed and len(logged) + sum(suppressed) == FLOOD


FLOOD = 2000


@pytest.fixture
async def served(app):
    """`app` on a real port, served as the daemon serves it (aiohttp's test server cancels handlers on a
    disconnect, the daemon lets them run on): yields (host, port)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][:2]
    finally:
        await runner.cleanup()


async def _raw_request(
    served, request_line: str, headers: dict[str, str], body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a socket to `served` and send `request_line`, `headers` and `body` as they are."""
    head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": "micd", **headers}.items())
    reader, writer = await asyncio.open_connection(*served)
    writer.write(f"{request_line}\r\n{head}\r\n".encode() + body)
    await writer.drain()
    return reader, writer


async def test_a_client_gone_mid_upload_is_not_an_error(served, app, caplog):
    data = b"x" * (4 << 20)
    digest = Digest.of(data)
    path = f"/cas/sha256/{digest.hex}/{len(data)}"
    with caplog.at_level(logging.DEBUG):
        headers = {**AUTH, "Content-Length": str(len(data))}
        _, writer = await _raw_request(served, f"PUT {path} HTTP/1.1", headers, data[: 1 << 20])
        await wait_until(lambda: app[ACTIVITY].in_flight == 1)
        writer.close()
        await wait_until(lambda: app[ACTIVITY].in_flight == 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("disconnected" in r.getMessage() for r in caplog.records if r.name == "micd.access")
    assert not await app[STORE].memory.contains(digest)
    async with aiohttp.ClientSession() as session:  # the daemon serves on
        response = await session.put(f"http://{served[0]}:{served[1]}{path}", data=data, headers=AUTH)
        assert response.status == 201


async def test_log_limiter_summarizes_what_it_left_out(caplog):
    logger = logging.getLogger("micd.test-limiter")
    limiter = LogLimiter(logger, burst=3, per_second=0.001, summary_after=0.05)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(10):
            limiter.log("401", logging.INFO, "line %d", i)
        limiter.log("400", logging.INFO, "other status")  # a bucket of its own
        assert caplog.messages == ["line 0", "line 1", "line 2", "other status"]
        await asyncio.sleep(0.2)  # the summary comes on its own, without another request
        assert caplog.messages[4:] == ["7 similar requests suppressed (401)"]
        limiter.log("401", logging.INFO, "still limited")
        limiter.flush()
        assert caplog.messages[5:] == ["1 similar requests suppressed (401)"]


@contextlib.contextmanager
def _level(logger: logging.Logger, level: int):
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


async def test_a_client_gone_mid_download_is_not_an_error(served, app, caplog):
    data = b"y" * (16 << 20)  # more than socket buffers hold: the server is mid-send when the client goes
    digest = Digest.of(data)
    await app[STORE].memory.put_bytes(digest, data)
    with caplog.at_level(logging.DEBUG):
        request_line = f"GET /cas/sha256/{digest.hex}/{len(data)} HTTP/1.1"
        reader, writer = await _raw_request(served, request_line, AUTH)
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        await wait_until(lambda: app[ACTIVITY].in_flight == 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("disconnected" in r.getMessage() for r in caplog.records if r.name == "micd.access")


async def test_expect_continue_without_the_token_is_refused_before_100(served):
    path = f"/cas/sha256/{'a' * 64}/1000"
    headers = {"Authorization": "Bearer wrong", "Content-Length": "1000", "Expect": "100-continue"}
    reader, writer = await _raw_request(served, f"PUT {path} HTTP/1.1", headers)
    try:
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 401 ")
    finally:
        writer.close()


async def test_a_flood_of_malformed_requests_cannot_fill_the_daemon_log(app, caplog):
    """aiohttp logs each unparsable request with a traceback: via the app's SERVER_LOGGER, rate-limited."""
    runner = web.AppRunner(app, access_log=None, logger=app[SERVER_LOGGER])
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    async def malformed() -> None:
        reader, writer = await asyncio.open_connection(*runner.addresses[0][:2])
        writer.write(b"GET /stats HTTP/1.1\r\nHost: micd\r\nBad\x01Header: x\r\n\r\n")
        assert b" 400 " in await reader.readline()
        writer.close()

    try:
        with caplog.at_level(logging.INFO):
            for _ in range(MALFORMED):
                await malformed()
    finally:
        await runner.cleanup()  # the app's cleanup writes the pending summary
    logged = [r for r in caplog.records if r.getMessage().startswith("Error handling request")]
    suppressed = [int(m[1]) for r in caplog.records if (m := re.search(r"(\d+) similar", r.getMessage()))]
    assert len(logged) <= 25 and suppressed and len(logged) + sum(suppressed) == MALFORMED


MALFORMED = 200
