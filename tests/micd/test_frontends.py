"""The frontend seam (micd/frontend.py, micd/app.py), proven for every declared frontend: routes stay inside
their own prefix and are disjoint, every route but /healthz needs the token (HTTP and gRPC), core errors map
to the same statuses everywhere, and client configuration renders. Adding a frontend to FRONTENDS runs it
through all of these."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from micd.app import FRONTENDS, create_app, create_grpc_server
from micd.config import load_config
from micd.errors import StoreFull, TierUnavailable
from micd.frontend import ClientContext, Frontend, check_client_config, check_frontends, owns
from micd.metrics import Metrics
from micd.tiers.memory import MemoryTier
from mickernel.errors import BadRequest, NotFound

TOKEN = "frontend-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEX = "a" * 64
SAMPLES = {
    "function": "sha256",
    "hex": HEX,
    "size": "1",
    "instance": "main/x",
    "key": HEX,
    "hash": "1234",
    "path": "ab/" + HEX,  # a multi-segment path (ccache subdirs, sccache WebDAV)
}
"""A valid value per path placeholder name, so a request reaches the store rather than failing validation."""
QUERY = "?slug=sample"
"""Query parameters some routes require (Turborepo's team), ignored by the others."""
_PLACEHOLDER = re.compile(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})+))?\}")
HTTP_FRONTENDS = [f for f in FRONTENDS if f.http is not None]
GRPC_FRONTENDS = [f for f in FRONTENDS if f.grpc is not None]
CLIENT_FRONTENDS = [f for f in FRONTENDS if f.client is not None]
ids = lambda f: f.name


class _Store:
    """A memory tier behind `for_tool`, or, with `error`, a store whose every call raises it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.memory = MemoryTier()
        self.error = error

    def for_tool(self, tool: str, namespaces: tuple[str, ...] = ()) -> object:
        if self.error is None:
            return self.memory
        self.raising = _Raising(self.error)
        return self.raising

    def stats(self) -> dict:
        return {}


class _Raising:
    """Raises `error` from every call, and counts the calls."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def __getattr__(self, name: str):
        async def fail(*args, **kwargs):
            self.calls += 1
            raise self.error

        return fail


def _app(store: _Store, frontend: Frontend, tmp_path: Path) -> web.Application:
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    return create_app(store, config, token=TOKEN, metrics=Metrics(), frontends=(frontend,))


def _routes(app: web.Application, *, mounted: bool = False) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the frontends' sub-applications (whose resources carry the
    prefix they are mounted under)."""
    out = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:
            out += _routes(info["app"], mounted=True)
            continue
        if not mounted:
            continue  # the daemon's own endpoints
        template = info.get("path") or info.get("formatter")
        path = _PLACEHOLDER.sub(lambda m: SAMPLES[m.group(1)], template)
        if "pattern" in info:
            assert info["pattern"].fullmatch(path), (template, path)
        out += [(route.method, path) for route in resource]
    return sorted(set(out))


def test_the_declared_frontends_do_not_overlap():
    check_frontends(FRONTENDS)
    assert {"cas", "bazel"} <= {f.name for f in FRONTENDS}


@pytest.mark.parametrize(
    "frontends",
    [
        (Frontend("a", "/x", http=web.Application), Frontend("b", "/x", http=web.Application)),
        (Frontend("a", "/x", http=web.Application), Frontend("b", "/x/y", http=web.Application)),
        (Frontend("a", "/metrics", http=web.Application),),
        (Frontend("a", "/healthz/x", http=web.Application),),
        (Frontend("a", namespaces=("ns",)), Frontend("b", namespaces=("ns/sub",))),
        (Frontend("a", namespaces=("ns",)), Frontend("b", namespaces=("ns",))),
        (Frontend("a"), Frontend("a")),
        (Frontend("a", "/x"),),  # a prefix without an app
        (Frontend("a", "x", http=web.Application),),  # not a path
        (Frontend("a", "/x/", http=web.Application),),
        (Frontend("a", "/", http=web.Application),),
        (Frontend("Bad name"),),
    ],
)
def test_overlapping_or_malformed_declarations_are_refused(frontends, tmp_path):
    with pytest.raises(ValueError):
        check_frontends(frontends)
    with pytest.raises(ValueError):  # the composition root refuses them at start-up
        _app(_Store(), frontends[0], tmp_path) if len(frontends) == 1 else create_app(
            _Store(), load_config(cwd=tmp_path, env={"HOME": str(tmp_path)}), token=TOKEN, metrics=Metrics(),
            frontends=frontends,
        )


def test_siblings_that_merely_start_alike_do_not_overlap():
    check_frontends(
        (
            Frontend("a", "/x", namespaces=("ns",), http=web.Application),
            Frontend("b", "/xy", namespaces=("nsx",), http=web.Application),
        )
    )
    assert owns("/x", "/x/y") and not owns("/x", "/xy")


async def test_two_frontends_serving_one_grpc_service_are_refused(tmp_path):
    bazel = next(f for f in GRPC_FRONTENDS if f.name == "bazel")
    twin = Frontend("twin", grpc=bazel.grpc)
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    with pytest.raises(ValueError, match="both serve gRPC service"):
        create_grpc_server(_Store(), config, token=TOKEN, frontends=(bazel, twin))


@pytest.mark.parametrize("frontend", HTTP_FRONTENDS, ids=ids)
def test_routes_stay_inside_their_prefix_and_are_disjoint(frontend, tmp_path):
    routes = _routes(_app(_Store(), frontend, tmp_path))
    assert routes, "a frontend with an HTTP app serves at least one route"
    for _, path in routes:
        assert owns(frontend.prefix, path)
        others = [f.prefix for f in HTTP_FRONTENDS if f is not frontend]
        assert not any(owns(prefix, path) for prefix in others), path


@pytest.mark.parametrize("frontend", HTTP_FRONTENDS, ids=ids)
async def test_every_route_needs_the_token(frontend, aiohttp_client, tmp_path):
    client = await aiohttp_client(_app(_Store(), frontend, tmp_path))
    for method, path in _routes(client.app):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}):
            response = await client.request(method, path, headers=headers, data=b"")
            assert response.status == 401, (method, path, headers)
            assert response.headers["Content-Type"] == "text/plain"  # exactly: Nx compares it verbatim
        response = await client.request(method, path, headers=AUTH, data=b"")
        assert response.status != 401, (method, path)  # the route itself was reached
    assert (await client.get(frontend.prefix + "/not/a/route")).status == 401
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("frontend", HTTP_FRONTENDS, ids=ids)
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequest("bad"), 400),
        (NotFound("gone"), 404),
        (StoreFull(used=10, needed=5, hard_cap=12), 507),
        (TierUnavailable("s3 down"), 503),
        (RuntimeError("bug"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
async def test_core_errors_map_to_one_status_on_every_route(frontend, error, status, aiohttp_client, tmp_path):
    store = _Store(error)
    client = await aiohttp_client(_app(store, frontend, tmp_path))
    for method, path in _routes(client.app):
        data = None if method != "PUT" else b"" if "/ac/" in path else b"x"  # b"": an empty ActionResult
        headers = {**AUTH, "X-Digest-SizeBytes": "1"} if method == "PUT" else AUTH
        calls = store.raising.calls
        response = await client.request(method, path + QUERY, headers=headers, data=data)
        if store.raising.calls == calls:  # a route that never asks the store (a status probe) cannot fail so
            assert response.status < 500, (method, path, await response.text())
            continue
        assert response.status == status, (method, path, await response.text())
        if method != "HEAD":
            assert len(await response.read()) < 10_000  # Bazel chokes on error bodies over 10 KiB


@pytest.mark.parametrize("frontend", GRPC_FRONTENDS, ids=ids)
async def test_every_grpc_method_needs_the_token(frontend, tmp_path):
    config = load_config(cwd=tmp_path, env={"HOME": str(tmp_path)})
    served = create_grpc_server(_Store(), config, token=TOKEN, frontends=(frontend,))
    port = served.server.add_insecure_port("127.0.0.1:0")
    await served.server.start()
    part = frontend.grpc(MemoryTier())
    methods = []
    for handler in part.handlers:
        for method in handler._method_handlers:  # grpc's generic handler keeps its methods by full name
            methods.append(method)
    assert methods
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in methods:
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    call = channel.unary_unary(method)(b"", metadata=metadata)
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    finally:
        await served.stop(None)


@pytest.mark.parametrize("frontend", CLIENT_FRONTENDS, ids=ids)
def test_client_configuration_renders(frontend, tmp_path):
    context = ClientContext(
        url=f"http://127.0.0.1:1{frontend.prefix or ''}",
        http_url="http://127.0.0.1:1",
        grpc_url="grpc://127.0.0.1:2",
        token=TOKEN,
        state_dir=tmp_path,
        settings=load_config(cwd=tmp_path, env={"HOME": str(tmp_path)}).tool_settings(frontend.name),
    )
    config = frontend.client(context)
    check_client_config(frontend.name, config)
    assert config.files or config.env
    rendered = "".join(config.files.values()) + "".join(config.env.values())
    assert TOKEN in rendered or any(str(tmp_path / name) in rendered for name in config.files)
    assert "127.0.0.1:1" in rendered or "127.0.0.1:2" in rendered or any(
        str(tmp_path / name) in rendered for name in config.files
    )
