"""Generic HTTP CAS endpoint: raw blobs by digest, to exercise the storage core without any tool protocol.

Routes (all need the session token; see micd/auth.py):

    PUT  /cas/{function}/{hex}/{size}  body = the blob (Content-Length or chunked); 201 (idempotent)
    GET  /cas/{function}/{hex}/{size}  200 with the blob, 206 for `Range: bytes=…` (416 if it lies past the
                                       end, 400 if malformed or several), 404 on a miss
    HEAD /cas/{function}/{hex}/{size}  200 with Content-Length if present, else 404 (never reads the body)

`function` is `sha256` or `blake3`, `hex` the lowercase 64-hex hash, `size` decimal bytes. The size is in the
path because the core's digests carry it (as REAPI resource names do). Segments are matched loosely and then
checked by `micd.validate.parse_digest`, so a traversal such as `..%2F` or a malformed hash is a 400, not a 404.

Bodies stream both ways: PUT feeds the request body (`_http.request_body`) to `store.put` (which hashes while
writing and publishes only on a match); GET sends bounded chunks, verified as they are read (`_http.send_blob`).
A PUT with `Expect: 100-continue` is told to continue only when the body is read, after every check.
"""

from __future__ import annotations

import re

from aiohttp import web

from micd.frontend import Frontend
from micd.store import Digest, Store
from micd.validate import parse_digest
from mickernel.errors import BadRequest, IntegrityError
from protocols._http import CONTENT_TYPE, bind, expect_continue, request_body, send_blob, status_for, sub_app

__all__ = ["FRONTEND", "app", "parse_range", "status_for"]

_ROUTE = "/{function}/{hex}/{size}"
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")  # 19 digits cover any blob size; int() of more is slow


def parse_digest_path(request: web.Request) -> Digest:
    info = request.match_info
    return parse_digest(info["function"], info["hex"], info["size"])


class RangeNotSatisfiable(Exception):
    """A well-formed range with no byte inside the blob: 416 (RFC 9110 §15.5.17), not a client error."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single `Range: bytes=a-b` into (offset, length); None means the whole blob.

    Raises BadRequest for multiple or malformed ranges (last before first included), RangeNotSatisfiable for
    one that starts past the end or asks for an empty suffix.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise BadRequest("unsupported or malformed Range header", header)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise RangeNotSatisfiable
        return size - length, length
    start = int(first)
    if last != "" and int(last) < start:
        raise BadRequest("malformed Range header (last byte before first)", header)
    if start >= size:
        raise RangeNotSatisfiable
    end = size - 1 if last == "" else min(int(last), size - 1)
    return start, end - start + 1


async def handle_head_blob(request: web.Request, store: Store) -> web.StreamResponse:
    digest = parse_digest_path(request)
    if not await store.contains(digest):
        return web.Response(status=404)
    return web.Response(
        status=200, headers={"Content-Length": str(digest.size), "Content-Type": CONTENT_TYPE}
    )


async def handle_get_blob(request: web.Request, store: Store) -> web.StreamResponse:
    digest = parse_digest_path(request)
    try:
        wanted = parse_range(request.headers.get("Range"), digest.size)
    except RangeNotSatisfiable:
        if not await store.contains(digest):  # a 416 names the blob's size: only for one that is stored
            return web.Response(status=404, text="blob not found\n")
        return web.Response(status=416, headers={"Content-Range": f"bytes */{digest.size}"})
    offset, length = wanted or (0, None)
    blob = await store.get(digest, offset, length)
    if blob is None:
        return web.Response(status=404, text="blob not found\n")
    if wanted is None:
        return await send_blob(request, blob)
    content_range = f"bytes {offset}-{offset + blob.length - 1}/{digest.size}"
    return await send_blob(request, blob, status=206, headers={"Content-Range": content_range})


async def handle_put_blob(request: web.Request, store: Store) -> web.StreamResponse:
    digest = parse_digest_path(request)
    announced = request.content_length
    if announced is not None and announced != digest.size:
        raise IntegrityError(f"{digest.size} bytes", f"Content-Length {announced}", what="upload size")
    # No existence check first: with S3 configured it would cost a HEAD request per new blob.
    await store.put(digest, request_body(request))
    return web.Response(status=201)


def app(store: Store) -> web.Application:
    """The endpoint's sub-application bound to `store` (normally `tiered.for_tool("cas")`)."""
    return sub_app(
        [
            web.head(_ROUTE, bind(handle_head_blob, store)),
            web.get(_ROUTE, bind(handle_get_blob, store), allow_head=False),
            web.put(_ROUTE, bind(handle_put_blob, store), expect_handler=expect_continue),
        ]
    )


FRONTEND = Frontend(name="cas", prefix="/cas", http=app)
