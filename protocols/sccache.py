"""sccache WebDAV storage (sccache 0.16's opendal client; details in ../shared/docs/protocols.md §6): the subset
of WebDAV that sccache uses, over virtual collections. Paths are relative to the frontend's prefix `/sccache`.

| route             | store                                                                                  |
|-------------------|----------------------------------------------------------------------------------------|
| GET /<file>       | get_record(`sccache`, key(path)), then its blob: 200, or 404                            |
| PUT /<file>       | put_stream(sha256, body, Content-Length), put_record; 201 (replaces)                   |
| PROPFIND /<dir>/  | none: 207 Multi-Status, a collection (every directory exists: they are virtual)        |
| PROPFIND /<file>  | get_record + contains: 207 with the file's length, or 404                              |
| MKCOL /<dir>/     | none: 201                                                                              |

A file path is up to `_MAX_DEPTH` segments of `[A-Za-z0-9_.-]` (never `.` or `..`): sccache sends
`/.sccache_check` (its start-up write probe) and `/a/b/c/<64 hex>` (three one-character directories, then the
key, under `SCCACHE_WEBDAV_KEY_PREFIX` if set); anything else, a traversal included, is a 400. The KV key is the
sha256 of the path (any such path, `.sccache_check` too, is one safe fixed-length key); the compiled output goes
to the CAS under its sha256. Directories hold nothing, so PROPFIND never lists members (any `Depth`): sccache
only stats a directory before its MKCOL, and opendal answers that 404 with MKCOL, which always succeeds here.

Client configuration: `SCCACHE_WEBDAV_ENDPOINT` (the prefixed URL) and `SCCACHE_WEBDAV_TOKEN` (sent as Bearer).
"""

from __future__ import annotations

import hashlib
import re
from email.utils import formatdate
from xml.sax.saxutils import escape

from aiohttp import web

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.store import Store
from micd.validate import parse_blob_size
from mickernel.errors import BadRequest
from protocols._http import bind, expect_continue, request_body, send_blob, sub_app
from protocols._keyed import find, open_artifact, put_artifact

__all__ = ["FRONTEND", "NAMESPACE", "app", "client_config", "parse_path"]

NAMESPACE = "sccache"
MAX_PROPFIND_BODY = 64 << 10
"""Largest PROPFIND body read (and dropped): opendal sends an 86-byte `allprop`."""
_MAX_DEPTH = 16
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_ROUTE = "/{path:.*}"  # matched loosely, then checked: a malformed path is a 400, not a 404


def parse_path(path: str) -> tuple[tuple[str, ...], bool]:
    """The segments of a request path and whether it names a collection (ends in `/`, or is the root)."""
    is_dir = path == "" or path.endswith("/")
    segments = tuple(path.removesuffix("/").split("/")) if path else ()
    if len(segments) > _MAX_DEPTH or not all(
        _SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments
    ):
        raise BadRequest("malformed WebDAV path", path[:200])
    return segments, is_dir


def _file_key(request: web.Request) -> str:
    segments, is_dir = parse_path(request.match_info["path"])
    if is_dir:
        raise BadRequest("a collection has no body", request.match_info["path"][:200])
    return hashlib.sha256("/".join(segments).encode()).hexdigest()


def _multistatus(request: web.Request, props: str) -> web.Response:
    """A 207 describing the requested resource alone."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:"><D:response>'
        f"<D:href>{escape(request.path)}</D:href><D:propstat><D:prop>{props}"
        f"<D:getlastmodified>{formatdate(usegmt=True)}</D:getlastmodified></D:prop>"
        "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>\n"
    )
    return web.Response(status=207, text=body, content_type="application/xml", charset="utf-8")


async def _drain(request: web.Request) -> None:
    """Read and drop a request body (a PROPFIND's property list: all we report is fixed), bounded."""
    received = 0
    async for chunk in request_body(request):
        received += len(chunk)
        if received > MAX_PROPFIND_BODY:
            raise BadRequest(f"body larger than {MAX_PROPFIND_BODY} bytes")


async def handle_get(request: web.Request, store: Store) -> web.StreamResponse:
    found = await open_artifact(store, NAMESPACE, _file_key(request))
    if found is None:
        return web.Response(status=404, text="no such file\n")
    return await send_blob(request, found[0])


async def handle_put(request: web.Request, store: Store) -> web.StreamResponse:
    key = _file_key(request)
    size = None if request.content_length is None else parse_blob_size(request.content_length)
    await put_artifact(store, NAMESPACE, key, request_body(request), size)
    return web.Response(status=201)


async def handle_propfind(request: web.Request, store: Store) -> web.StreamResponse:
    _, is_dir = parse_path(request.match_info["path"])
    await _drain(request)
    if is_dir:
        return _multistatus(request, "<D:resourcetype><D:collection/></D:resourcetype>")
    found = await find(store, NAMESPACE, _file_key(request))
    if found is None:
        return web.Response(status=404, text="no such file\n")
    return _multistatus(request, f"<D:resourcetype/><D:getcontentlength>{found[0].size}</D:getcontentlength>")


async def handle_mkcol(request: web.Request, store: Store) -> web.StreamResponse:
    parse_path(request.match_info["path"])
    return web.Response(status=201)


def app(store: Store) -> web.Application:
    """The sccache WebDAV sub-application bound to `store` (normally `tiered.for_tool("sccache", …)`)."""
    return sub_app(
        [
            web.get(_ROUTE, bind(handle_get, store), allow_head=False),
            web.put(_ROUTE, bind(handle_put, store, close_failed_puts=True), expect_handler=expect_continue),
            web.route("PROPFIND", _ROUTE, bind(handle_propfind, store)),
            web.route("MKCOL", _ROUTE, bind(handle_mkcol, store)),
        ]
    )


def client_config(context: ClientContext) -> ClientConfig:
    return ClientConfig(env={"SCCACHE_WEBDAV_ENDPOINT": context.url, "SCCACHE_WEBDAV_TOKEN": context.token})


FRONTEND = Frontend(
    name="sccache", prefix="/sccache", namespaces=(NAMESPACE,), http=app, client=client_config
)
