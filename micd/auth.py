"""Session-token authentication for every micd listener (HTTP and gRPC).

Clients prove they belong to the session with its token, sent as any of:

- `Authorization: Bearer <token>` (Nx, Turbo, sccache, ccache, `mic` itself);
- `Authorization: Basic base64(<any user>:<token>)` in standard base64 (Gradle, curl `-u`);
- the same in URL-safe base64, which is what Bazel sends for URL userinfo (`http://u:<token>@host/`).

`/healthz` is the one open HTTP path, so `mic daemon start` can probe readiness before it reads the token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from aiohttp import web

__all__ = ["OPEN_PATHS", "TokenInterceptor", "auth_middleware", "new_token", "token_matches"]

OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = 'Bearer realm="micd", Basic realm="micd"'


def new_token() -> str:
    """Return a fresh random session token (URL-safe, 43 characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def _decode_basic(payload: str) -> str | None:
    """Return the password of a Basic credential in standard or URL-safe base64, or None."""
    padded = payload + "=" * (-len(payload) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = (
                decode(padded.encode("ascii"), validate=True)
                if decode is base64.b64decode
                else decode(padded)
            )
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeError):
            continue
        _user, sep, password = text.partition(":")
        if sep:
            return password
    return None


def token_matches(authorization_header: str | None, token: str) -> bool:
    """Check that an Authorization header value carries `token` (Bearer, or Basic with it as password).

    Comparison is constant-time. An empty token never matches.
    """
    if not authorization_header or not token:
        return False
    scheme, _, credential = authorization_header.strip().partition(" ")
    credential = credential.strip()
    scheme = scheme.lower()
    if scheme == "bearer":
        presented = credential
    elif scheme == "basic":
        presented = _decode_basic(credential) or ""
    else:
        return False
    # surrogateescape: aiohttp hands undecodable header bytes over as surrogates; they must not match, not crash
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def auth_middleware(token: str, open_paths: frozenset[str] = OPEN_PATHS) -> Callable:
    """Aiohttp middleware: 401 with a challenge unless the request carries the session token.

    It also guards unknown paths, so an unauthenticated caller cannot probe which routes exist.
    """

    @web.middleware
    async def check_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in open_paths and not token_matches(request.headers.get("Authorization"), token):
            # Content-Type exactly `text/plain`, no charset: Nx compares it verbatim and otherwise reports
            # "Misconfigured" instead of showing this text (protocols.md §3).
            return web.Response(
                status=401,
                body=b"missing or wrong session token\n",
                content_type="text/plain",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        return await handler(request)

    return check_token


def _deny_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Return a handler of the same streaming shape as `handler` that aborts with UNAUTHENTICATED."""

    async def deny(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong session token")

    async def deny_stream(request_or_iterator: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong session token")
        yield  # pragma: no cover - makes this an async generator for streaming responses

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


async def _noop(request: object, context: grpc.aio.ServicerContext) -> None:  # pragma: no cover
    return None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio interceptor: UNAUTHENTICATED unless the `authorization` metadata carries the session token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("TokenInterceptor needs a non-empty token")
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass the call to its handler if the token matches, else to one that aborts."""
        handler = await continuation(handler_call_details)
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == "authorization":
                header = value.decode("latin-1") if isinstance(value, bytes) else value
                break
        if token_matches(header, self._token):
            return handler
        # Unknown methods are denied too, so an unauthenticated caller cannot probe which services exist.
        return _deny_handler(handler or grpc.unary_unary_rpc_method_handler(_noop))
