"""ccache HTTP remote storage (`remote_storage` / `CCACHE_REMOTE_STORAGE`, as ccache 4.7.5 speaks it; details in
../shared/docs/protocols.md §6). Paths are relative to the frontend's prefix `/ccache`.

| route                    | store                                                                        |
|--------------------------|------------------------------------------------------------------------------|
| GET    /<key>, /<2>/<r>  | get_record(`ccache`, key), then its blob: 200, or 404 (a silent miss)        |
| HEAD   /<key>, /<2>/<r>  | get_record + contains: 200 with Content-Length, or 404; the body is not read |
| PUT    /<key>, /<2>/<r>  | put_stream(sha256, body, Content-Length), put_record; 200 (replaces)         |
| DELETE /<key>, /<2>/<r>  | a tombstone record (the KV has no delete; the blob stays): 204, or 404       |

The three layouts map onto one key: `flat` sends `/<key>`, `subdirs` (the default) `/<first 2>/<rest>`, which is
the same key, and `bazel` `/ac/<64 hex>`, the key `ac<64 hex>` (ccache pads its key for Bazel; it never names a
`subdirs` entry: those are 33 characters). Keys are lowercase letters and digits (ccache's base32hex), at most
`_MAX_KEY` long; anything else, a traversal included, is a 400. The result bytes go to the CAS under their
sha256. ccache PUTs with `only_if_missing` off by default and overwrites on `--recache`, so a re-upload
replaces.

Client configuration: `CCACHE_REMOTE_STORAGE=<url>|bearer-token=<token>` (4.7 has the `bearer-token`
attribute; the token is URL-safe base64, so it needs no quoting in the `|`-separated value).
"""

from __future__ import annotations

import re

from aiohttp import web

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.store import Store
from micd.validate import parse_blob_size
from mickernel.errors import BadRequest
from protocols._http import bind, expect_continue, request_body, send_blob, sub_app
from protocols._keyed import find, open_artifact, put_artifact, remove

__all__ = ["FRONTEND", "NAMESPACE", "app", "client_config"]

NAMESPACE = "ccache"
_MAX_KEY = 128
_PART = re.compile(r"[0-9a-z]+")
_ROUTE = "/{path:.*}"  # matched loosely, then checked: a malformed key is a 400, not a 404


def parse_path(path: str) -> str:
    """The ccache key of a `flat` (`key`), `subdirs` (`ke/y`) or `bazel` (`ac/<hex>`) path."""
    parts = path.split("/")
    if len(parts) == 2 and len(parts[0]) != 2:
        raise BadRequest("malformed ccache path: the directory has two characters", path[:200])
    key = "".join(parts)
    if len(parts) > 2 or len(key) > _MAX_KEY or not all(_PART.fullmatch(part) for part in parts):
        raise BadRequest("malformed ccache key", path[:200])
    return key


def _key(request: web.Request) -> str:
    return parse_path(request.match_info["path"])


async def handle_get(request: web.Request, store: Store) -> web.StreamResponse:
    found = await open_artifact(store, NAMESPACE, _key(request))
    if found is None:
        return web.Response(status=404, text="no such entry\n")
    return await send_blob(request, found[0])


async def handle_head(request: web.Request, store: Store) -> web.StreamResponse:
    found = await find(store, NAMESPACE, _key(request))
    if found is None:
        return web.Response(status=404)
    return web.Response(status=200, headers={"Content-Length": str(found[0].size)})


async def handle_put(request: web.Request, store: Store) -> web.StreamResponse:
    key = _key(request)
    size = None if request.content_length is None else parse_blob_size(request.content_length)
    await put_artifact(store, NAMESPACE, key, request_body(request), size)
    return web.Response(status=200)


async def handle_delete(request: web.Request, store: Store) -> web.StreamResponse:
    removed = await remove(store, NAMESPACE, _key(request))
    return web.Response(status=204) if removed else web.Response(status=404, text="no such entry\n")


def app(store: Store) -> web.Application:
    """The ccache storage's sub-application bound to `store` (normally `tiered.for_tool("ccache", …)`)."""
    return sub_app(
        [
            web.get(_ROUTE, bind(handle_get, store), allow_head=False),
            web.head(_ROUTE, bind(handle_head, store)),
            web.put(_ROUTE, bind(handle_put, store, close_failed_puts=True), expect_handler=expect_continue),
            web.delete(_ROUTE, bind(handle_delete, store)),
        ]
    )


def client_config(context: ClientContext) -> ClientConfig:
    if not re.fullmatch(r"[A-Za-z0-9_.~-]+", context.token):
        raise ValueError("the session token must be URL-safe to go into CCACHE_REMOTE_STORAGE")
    return ClientConfig(env={"CCACHE_REMOTE_STORAGE": f"{context.url}|bearer-token={context.token}"})


FRONTEND = Frontend(name="ccache", prefix="/ccache", namespaces=(NAMESPACE,), http=app, client=client_config)
