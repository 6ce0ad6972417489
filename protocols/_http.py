"""Protocol-side HTTP helpers shared by the aiohttp frontends: the one MicError → status mapping, handler
binding, reading a request body (deferring `100 Continue` to then), and sending an open `micd.store.Blob`.

The HTTP frontends (`bazel_http`, `cas_http`) serve blobs the same way (`send_blob`): by sendfile from a blob
that offers it (`SendfileBlob.send_verified`, a large disk-tier blob), else bounded chunks from
`Blob.chunks()`; either way every stored byte is hashed on its way out and the last part waits for the digest.
Corruption detected mid-stream (IntegrityError) comes after the headers, so no status can be sent: the
connection is aborted and the client sees a truncated body, never a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import BinaryIO

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from micd.errors import StoreFull, TierUnavailable, Unauthorized
from micd.store import Blob, SendFile, SendfileBlob, Store
from mickernel.errors import BadRequest, IntegrityError, MicError, NotFound

__all__ = [
    "CONTENT_TYPE",
    "Encoder",
    "bind",
    "error_response",
    "expect_continue",
    "request_body",
    "send_blob",
    "status_for",
    "sub_app",
]

CONTENT_TYPE = "application/octet-stream"
Handler = Callable[[web.Request, Store], Awaitable[web.StreamResponse]]
Encoder = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
"""Re-encodes a chunk stream (e.g. zstd); paired with its Content-Encoding name."""
log = logging.getLogger(__name__)
_AWAITING_CONTINUE = web.RequestKey("awaiting_continue", bool)


async def expect_continue(request: web.Request) -> None:
    """The `expect_handler` of upload routes: owe `100 Continue` until the handler first reads the body.

    aiohttp's default answers 100 before the middlewares and the handler run, so the client sent a body that
    was then refused (no token, wrong size, store full). Deferred, such a refusal is the first status the
    client sees. An expectation other than 100-continue is refused (417), as aiohttp does.
    """
    if request.version != HttpVersion11:
        return
    expect = request.headers["Expect"]
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect[:100]}\n")
    request[_AWAITING_CONTINUE] = True


async def request_body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body in the pieces aiohttp received or decoded them in (no re-joining copy: a fixed piece
    size cost a third more event-loop CPU per GiB); a body aiohttp cannot decode (e.g. not valid for its
    Content-Encoding) is a BadRequest, so a 400 rather than a 500. Before the first read, it sends the
    `100 Continue` that `expect_continue` deferred."""
    if request.pop(_AWAITING_CONTINUE, False):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as in aiohttp's own expect handler: the response has not begun
    content = request.content
    try:
        while True:
            chunk, _ = await content.readchunk()
            if chunk:
                yield chunk
            elif content.at_eof():
                return
    except (HttpProcessingError, RequestPayloadError) as exc:
        raise BadRequest("malformed request body", str(exc).strip()[:200]) from exc


def status_for(exc: MicError) -> int:
    """Map a core error to the HTTP frontends' status (the one mapping)."""
    if isinstance(exc, BadRequest | IntegrityError):
        return 400
    if isinstance(exc, StoreFull):
        return 507
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, TierUnavailable):
        return 503
    return 500


def error_response(exc: MicError) -> web.Response:
    """A small plain-text error: some clients (Bazel) choke on error bodies over 10 KiB."""
    return web.Response(status=status_for(exc), text=str(exc)[:2000] + "\n")


def sub_app(routes: list[web.RouteDef]) -> web.Application:
    """A frontend's own aiohttp application holding `routes`, for the composition root to mount under the
    frontend's prefix (the daemon's middlewares, auth first, run for it too)."""
    app = web.Application()
    app.router.add_routes(routes)
    return app


def bind(
    handler: Handler, store: Store, *, close_failed_puts: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`handler(request, store)` as an aiohttp handler that renders a MicError with `error_response`.

    With `close_failed_puts`, a failed PUT also closes the connection: its body may be unread or undecodable.
    """

    async def route(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request, store)
        except MicError as exc:
            response = error_response(exc)
            if close_failed_puts and request.method == "PUT":
                response.force_close()
            return response

    route.__name__ = handler.__name__
    return route


async def send_blob(
    request: web.Request,
    blob: Blob,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    encoding: tuple[str, Encoder] | None = None,
    content_type: str = CONTENT_TYPE,
) -> web.StreamResponse:
    """Send `blob` (its range) as the response body and close it; the response is complete on return.

    Unencoded, a `SendfileBlob` goes by sendfile (as aiohttp's FileResponse sends, after the headers): no copy
    of the body through Python: a 1 GiB GET went from 0.75 to 1.0-1.1 GB/s (bench/RESULTS.md, issue 10).
    Otherwise from `chunks()`. An encoded body has no Content-Length (chunked).
    """
    try:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = content_type
        if encoding is None:
            response.content_length = blob.length
        else:
            response.headers["Content-Encoding"] = encoding[0]
        try:
            if encoding is None and isinstance(blob, SendfileBlob):
                await response.prepare(request)
                await blob.send_verified(_sendfile_to(request), response.write)
            else:
                chunks = blob.chunks() if encoding is None else encoding[1](blob.chunks())
                await response.prepare(request)
                async for chunk in chunks:
                    await response.write(chunk)
        except IntegrityError as exc:
            log.error("%s failed verification while streaming (%s); connection aborted", request.path, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        await blob.aclose()


def _sendfile_to(request: web.Request) -> SendFile:
    """`SendFile` into the request's connection, for a response whose headers are out.

    A client gone mid-sendfile fails the call, but the transport (its reading paused meanwhile) learns of it
    only later: aborted here, it is closed at once, so the app logs a disconnect, never an unhandled error.
    """
    loop = asyncio.get_running_loop()

    async def send_file(file: BinaryIO, offset: int, count: int) -> int:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost")
        try:
            return await loop.sendfile(transport, file, offset, count)
        except ConnectionError:
            transport.abort()
            raise

    return send_file
