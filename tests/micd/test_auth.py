"""micd.auth: the pure token check (every accepted and rejected form), middleware, gRPC interceptor."""

from __future__ import annotations

import base64

import grpc
import pytest
from aiohttp import web

from micd.auth import TokenInterceptor, auth_middleware, new_token, token_matches

# Chosen so standard and URL-safe base64 differ ('>>>?' encodes to '+'/'/' vs '-'/'_').
TOKEN = ">>>?tok>>>?"


def _basic(user: str, password: str, *, urlsafe: bool = False, strip: bool = False) -> str:
    raw = f"{user}:{password}".encode()
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return "Basic " + (encoded.rstrip("=") if strip else encoded)


def test_fixture_token_really_differs_between_alphabets():
    assert _basic("a", TOKEN) != _basic("a", TOKEN, urlsafe=True)


ACCEPT = [
    ("bearer", f"Bearer {TOKEN}"),
    ("bearer lowercase scheme", f"bearer {TOKEN}"),
    ("bearer extra spaces", f"  Bearer   {TOKEN}  "),
    ("basic standard", _basic("user", TOKEN)),
    ("basic url-safe (Bazel URL userinfo)", _basic("user", TOKEN, urlsafe=True)),
    ("basic url-safe unpadded", _basic("u", TOKEN, urlsafe=True, strip=True)),
    ("basic empty username", _basic("", TOKEN)),
    ("basic any username", _basic("someone-else", TOKEN)),
]
REJECT = [
    ("missing", None),
    ("empty", ""),
    ("bearer wrong", "Bearer nope"),
    ("bearer prefix of token", f"Bearer {TOKEN[:-1]}"),
    ("bearer empty", "Bearer "),
    ("basic wrong password", _basic("user", "nope")),
    ("basic token as username", _basic(TOKEN, "x")),
    ("basic no colon", "Basic " + base64.b64encode(TOKEN.encode()).decode()),
    ("basic garbage", "Basic !!!not-base64!!!"),
    ("basic not utf-8", "Basic " + base64.b64encode(b"u:\xff\xfe").decode()),
    ("other scheme", f"Token {TOKEN}"),
    ("token alone", TOKEN),
]


@pytest.mark.parametrize("header", [h for _, h in ACCEPT], ids=[d for d, _ in ACCEPT])
def test_token_matches_accepts(header):
    assert token_matches(header, TOKEN)


@pytest.mark.parametrize("header", [h for _, h in REJECT], ids=[d for d, _ in REJECT])
def test_token_matches_rejects(header):
    assert not token_matches(header, TOKEN)


def test_empty_token_never_matches():
    assert not token_matches("Bearer ", "")
    assert not token_matches(_basic("u", ""), "")


def test_new_tokens_are_random_and_urlsafe():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


async def test_middleware(aiohttp_client):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[auth_middleware(TOKEN)])
    app.router.add_get("/healthz", ok)
    app.router.add_get("/secret", ok)
    client = await aiohttp_client(app)
    assert (await client.get("/healthz")).status == 200
    for path in ("/secret", "/no/such/route"):
        response = await client.get(path)
        assert response.status == 401
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert response.headers["Content-Type"] == "text/plain"  # exactly: Nx compares it verbatim
        assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/secret", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    assert (
        await client.get("/secret", headers={"Authorization": _basic("x", TOKEN, urlsafe=True)})
    ).status == 200
    assert (await client.get("/no/such/route", headers={"Authorization": f"Bearer {TOKEN}"})).status == 404


@pytest.fixture
async def grpc_echo():
    """A grpc.aio server with the interceptor and one method of each streaming shape (raw bytes)."""

    async def unary(request: bytes, context) -> bytes:
        return b"echo:" + request

    async def server_stream(request: bytes, context):
        yield request
        yield request

    async def client_stream(requests, context) -> bytes:
        return b"".join([r async for r in requests])

    async def bidi(requests, context):
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.aio.server(interceptors=[TokenInterceptor(TOKEN)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close()
    await server.stop(None)


async def _call_all(channel, metadata):
    results = []
    results.append(await channel.unary_unary("/test.Echo/Unary")(b"x", metadata=metadata))
    results.append(
        [r async for r in channel.unary_stream("/test.Echo/ServerStream")(b"y", metadata=metadata)]
    )
    results.append(
        await channel.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b"]), metadata=metadata)
    )
    results.append(
        [r async for r in channel.stream_stream("/test.Echo/Bidi")(iter([b"c"]), metadata=metadata)]
    )
    return results


async def test_grpc_interceptor_allows_token(grpc_echo):
    channel = grpc_echo
    for metadata in (
        (("authorization", f"Bearer {TOKEN}"),),
        (("authorization", _basic("u", TOKEN, urlsafe=True)),),
    ):
        assert await _call_all(channel, metadata) == [b"echo:x", [b"y", b"y"], b"ab", [b"c"]]


@pytest.mark.parametrize(
    "metadata",
    [None, (("authorization", "Bearer wrong"),), (("x-other", TOKEN),)],
    ids=["missing", "wrong", "other header"],
)
@pytest.mark.parametrize("method", ["Unary", "ServerStream", "ClientStream", "Bidi", "NoSuchMethod"])
async def test_grpc_interceptor_rejects(grpc_echo, metadata, method):
    channel = grpc_echo
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if method in ("Unary", "NoSuchMethod"):
            await channel.unary_unary(f"/test.Echo/{method}")(b"x", metadata=metadata)
        elif method == "ServerStream":
            [r async for r in channel.unary_stream("/test.Echo/ServerStream")(b"y", metadata=metadata)]
        # Streaming requests send no message here: the server rejects before reading any, and grpcio's Python
        # client reports a send racing that rejection as INTERNAL instead of the server's status.
        elif method == "ClientStream":
            await channel.stream_unary("/test.Echo/ClientStream")(iter([]), metadata=metadata)
        else:
            [r async for r in channel.stream_stream("/test.Echo/Bidi")(iter([]), metadata=metadata)]
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_interceptor_needs_a_token():
    with pytest.raises(ValueError):
        TokenInterceptor("")
