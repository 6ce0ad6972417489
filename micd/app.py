"""The composition root: builds the store from config and mounts every frontend on the HTTP and gRPC servers.

This is the only module that imports `protocols`. To add a protocol, add its module's `FRONTEND` to
`FRONTENDS` (micd/frontend.py says what a declaration holds). From that tuple alone, `create_app` mounts each
HTTP part as a sub-application under its prefix, `create_grpc_server` registers each gRPC part, and the
lifecycle writes each client configuration. Each part gets `store.for_tool(name, namespaces)`: metrics per
tool, and KV access limited to the namespaces it declared. Overlapping declarations stop the daemon at start.

Daemon endpoints of its own: `/healthz` (open, for readiness probes), `/metrics` (Prometheus text) and
`/stats` (JSON for `mic stats`). Client-caused 4xx and disconnects go to the `micd.access` logger, server
errors to `micd`, aiohttp's own (`SERVER_LOGGER`) to `micd.http`, all rate-limited (`LogLimiter`): any local
user can send requests, and must not be able to fill the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from aiohttp import web

from micd.auth import OPEN_PATHS, TokenInterceptor, auth_middleware
from micd.config import Config
from micd.frontend import Frontend, check_frontends, check_services
from micd.metrics import Metrics
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols import bazel, cas_http, ccache, gradle, nx, sccache, turbo

__all__ = [
    "ACTIVITY",
    "FRONTENDS",
    "GRPC_OPTIONS",
    "METRICS",
    "SERVER_LOGGER",
    "STORE",
    "Activity",
    "GrpcServer",
    "LogLimiter",
    "create_app",
    "create_grpc_server",
    "new_grpc_server",
    "open_store",
]

FRONTENDS: tuple[Frontend, ...] = (
    cas_http.FRONTEND,
    bazel.FRONTEND,
    nx.FRONTEND,
    turbo.FRONTEND,
    gradle.FRONTEND,
    ccache.FRONTEND,
    sccache.FRONTEND,
)
"""Every tool the daemon serves, one line per protocol module."""

_CLIENT_GONE = 499  # nginx's "client closed request": the status of a response no client will read
GRPC_MAX_MESSAGE = 32 << 20  # ≥ 16 MiB: Bazel batches up to its own 4 MiB limit, other clients go higher.
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
)
log = logging.getLogger("micd")
access_log = logging.getLogger("micd.access")
server_log = logging.getLogger("micd.http")  # aiohttp's own server errors, e.g. unparsable requests
# what `Logger.log` takes as exc_info (so `_LimitedLogger.log` takes all `LoggerAdapter.log` does)
_ExcInfo = (
    BaseException | bool | tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None] | None
)


class Activity:
    """Last-request time and in-flight count, for the idle timeout (a long upload is not idleness)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.in_flight = 0

    def touch(self) -> None:
        """Record activity now."""
        self.last = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last request ended; 0 while any request is in flight."""
        return 0.0 if self.in_flight else time.monotonic() - self.last


class LogLimiter:
    """Log through `logger` at most `burst` lines at once, then `per_second`, per key (e.g. a status code).

    Lines over the limit are counted, not written: `summary_after` seconds after the first of them, and at
    `flush()`, one line per key reports how many were left out. So the log grows by a bounded amount per key
    and second whatever the request rate, and no request goes uncounted.
    """

    def __init__(
        self, logger: logging.Logger, *, burst: int = 20, per_second: float = 1.0, summary_after: float = 10.0
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._per_second = per_second
        self._summary_after = summary_after
        self._tokens: dict[str, tuple[float, float]] = {}  # key → (tokens, when counted)
        self._suppressed: dict[str, tuple[int, int]] = {}  # key → (count, level)

    def log(self, key: str, level: int, msg: str, *args: object, exc_info: _ExcInfo = None) -> None:
        """Log `msg % args` at `level` if `key` has a token left, else count it for the key's summary."""
        now = time.monotonic()
        tokens, then = self._tokens.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._per_second)
        if tokens >= 1:
            self._tokens[key] = (tokens - 1, now)
            self._logger.log(level, msg, *args, exc_info=exc_info)
            return
        self._tokens[key] = (tokens, now)
        count, _ = self._suppressed.get(key, (0, level))
        if count == 0:
            asyncio.get_running_loop().call_later(self._summary_after, self._summarize, key)
        self._suppressed[key] = (count + 1, level)

    def _summarize(self, key: str) -> None:
        count, level = self._suppressed.pop(key, (0, 0))
        if count:
            self._logger.log(level, "%d similar requests suppressed (%s)", count, key)

    def flush(self) -> None:
        """Write the pending summaries now (at shutdown)."""
        for key in list(self._suppressed):
            self._summarize(key)


class _LimitedLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose every line goes through a LogLimiter, keyed by its message template: for aiohttp's
    server, which logs each request it cannot parse with a traceback (garbage sent to the port)."""

    def __init__(self, logger: logging.Logger, limiter: LogLimiter) -> None:
        super().__init__(logger, {})
        self._limiter = limiter

    def log(self, level: int, msg: object, *args: object, exc_info: _ExcInfo = None, **_: object) -> None:
        """Log (or count) `msg % args`; other keyword arguments of `Logger.log` are dropped."""
        if self.isEnabledFor(level):
            self._limiter.log(str(msg), level, str(msg), *args, exc_info=exc_info)


STORE = web.AppKey("store", object)
METRICS = web.AppKey("metrics", Metrics)
ACTIVITY = web.AppKey("activity", Activity)
SERVER_LOGGER = web.AppKey("server_logger", logging.LoggerAdapter)
"""The `logger` to give the AppRunner serving the app: `micd.http`, rate-limited."""
_STARTED = web.AppKey("started", float)


def _destination_id(config: Config) -> str:
    destination = f"{config.s3_endpoint_url or ''}|{config.s3_bucket}|{config.s3_prefix}"
    return hashlib.sha256(destination.encode()).hexdigest()[:16]


async def open_store(config: Config, metrics: Metrics) -> Any:
    """Open the tiers named by `config` and compose them; the caller must `close()` the result."""
    s3 = queue = None
    if config.s3_enabled:
        # Imported only when needed: aioboto3 costs ~140 ms of cold start on a daemon that never uses S3.
        from micd.tiers.s3 import S3Tier
        from micd.upload_queue import UploadQueue

        s3 = S3Tier(
            bucket=config.s3_bucket or "",
            prefix=config.s3_prefix,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
        )
        # The journal lives in the shared cache root, not the session's state dir: pending uploads of a
        # session that never restarts are replayed by the next daemon of any session of this user. One
        # journal per destination, so a daemon never uploads into a bucket other than the one journaled for.
        queue = UploadQueue(config.cache_dir / "v1" / "s3-queue" / _destination_id(config))
    store = TieredStore(
        memory=MemoryTier(budget=config.memory_budget),
        disk=DiskTier(config.cache_dir, soft_cap=config.disk_soft_cap, hard_cap=config.disk_hard_cap),
        s3=s3,
        queue=queue,
        metrics=metrics,
    )
    await store.start()
    return store


def _activity_middleware(activity: Activity) -> Callable:
    @web.middleware
    async def track(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.path in OPEN_PATHS:  # readiness probes (`mic daemon status`) do not keep the daemon alive
            return await handler(request)
        activity.in_flight += 1
        activity.touch()
        try:
            return await handler(request)
        finally:
            activity.in_flight -= 1
            activity.touch()

    return track


def _log_middleware(access: LogLimiter, errors: LogLimiter) -> Callable:
    """4xx and client disconnects to the access log, server errors to the daemon log; nothing else."""

    def log_status(request: web.Request, status: int) -> None:
        args = (request.remote, request.method, request.path_qs, status)
        if 400 <= status < 500:
            access.log(str(status), logging.INFO, '%s "%s %s" %d', *args)
        elif status >= 500:
            errors.log(str(status), logging.ERROR, '%s "%s %s" %d', *args)

    @web.middleware
    async def log_outcome(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            log_status(request, exc.status)
            raise
        except Exception as exc:
            if isinstance(exc, ConnectionError) and request.transport is None:
                # The client went away mid-request (an upload or a download cut short): normal, and nothing
                # to answer. Raising would have aiohttp log an error; the response returned is never sent.
                args = (request.remote, request.method, request.path_qs)
                access.log("disconnected", logging.INFO, '%s "%s %s" client disconnected', *args)
                return web.Response(status=_CLIENT_GONE)
            line = "unhandled error in %s %s"
            errors.log("unhandled", logging.ERROR, line, request.method, request.path, exc_info=True)
            raise
        log_status(request, response.status)
        return response

    return log_outcome


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _numeric_leaves(data: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flatten numeric leaves of nested stats into gauge names, e.g. store_upload_queue_depth."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = re.sub(r"[^a-zA-Z0-9_]", "_", f"{prefix}_{key}")
        if isinstance(value, dict):
            out.update(_numeric_leaves(value, name))
        elif isinstance(value, int | float):  # bool included: 0/1
            out[name] = float(value)
    return out


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    # Store-level state (tier sizes, upload queue depth, S3 health) is exported as gauges at scrape time.
    for name, value in _numeric_leaves(request.app[STORE].stats(), "store").items():  # type: ignore[attr-defined]
        metrics.set_gauge(name, value)
    metrics.set_gauge("uptime_seconds", round(time.monotonic() - request.app[_STARTED], 3))
    return web.Response(
        text=metrics.render_prometheus(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - request.app[_STARTED], 3),
            "store": request.app[STORE].stats(),  # type: ignore[attr-defined]
            "metrics": request.app[METRICS].snapshot(),
        }
    )


def create_app(
    store: Any,
    config: Config,
    *,
    token: str,
    metrics: Metrics,
    activity: Activity | None = None,
    frontends: Sequence[Frontend] = FRONTENDS,
) -> web.Application:
    """Build the HTTP application: auth on all but /healthz, daemon endpoints, then each frontend's
    sub-application under its prefix."""
    check_frontends(frontends)
    activity = activity or Activity()
    access, errors, server = LogLimiter(access_log), LogLimiter(log), LogLimiter(server_log)
    app = web.Application(
        # Auth before activity: a request without the token must not keep the daemon from idling out.
        middlewares=[_log_middleware(access, errors), auth_middleware(token), _activity_middleware(activity)],
        client_max_size=1 << 20,  # only for request.read(); streamed bodies are unbounded by design
    )
    app[STORE] = store
    app[METRICS] = metrics
    app[ACTIVITY] = activity
    app[_STARTED] = time.monotonic()
    app[SERVER_LOGGER] = _LimitedLogger(server_log, server)

    async def flush_logs(app: web.Application) -> None:
        for limiter in (access, errors, server):
            limiter.flush()

    app.on_cleanup.append(flush_logs)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/stats", handle_stats)
    for frontend in frontends:
        if frontend.http is not None and frontend.prefix is not None:
            view = store.for_tool(frontend.name, frontend.namespaces)
            app.add_subapp(frontend.prefix, frontend.http(view))
    return app


class _ActivityInterceptor(grpc.aio.ServerInterceptor):
    """Count gRPC calls in flight (a long ByteStream upload is not idleness), like the HTTP middleware."""

    def __init__(self, activity: Activity) -> None:
        self._activity = activity

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's behaviour so the call counts as in flight until it ends."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        activity = self._activity

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            activity.in_flight += 1
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                activity.in_flight -= 1
                activity.touch()

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            activity.in_flight += 1
            try:
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):  # a coroutine that writes with context.write()
                    await result
            finally:
                activity.in_flight -= 1
                activity.touch()

        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behaviour = getattr(handler, kind)
        return handler._replace(**{kind: streaming if handler.response_streaming else unary})


def new_grpc_server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A gRPC server with the daemon's message limits: the daemon's and the tests' are built alike."""
    return grpc.aio.server(interceptors=list(interceptors), options=GRPC_OPTIONS)


@dataclass
class GrpcServer:
    """The daemon's gRPC server and the clean-up its frontends declared, run once it has stopped."""

    server: grpc.aio.Server
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def stop(self, grace: float | None) -> None:
        """Stop serving (in-flight calls get `grace` seconds), then let each frontend clean up."""
        await self.server.stop(grace)
        for close in self.closers:
            await close()


def create_grpc_server(
    store: Any,
    config: Config,
    *,
    token: str,
    activity: Activity | None = None,
    frontends: Sequence[Frontend] = FRONTENDS,
) -> GrpcServer:
    """Build the gRPC server (not yet bound or started): token interceptor and each frontend's services."""
    check_frontends(frontends)
    server = new_grpc_server([TokenInterceptor(token), _ActivityInterceptor(activity or Activity())])
    parts = {f.name: f.grpc(store.for_tool(f.name, f.namespaces)) for f in frontends if f.grpc is not None}
    check_services(parts)
    for part in parts.values():
        server.add_generic_rpc_handlers(tuple(part.handlers))
    return GrpcServer(server, tuple(part.close for part in parts.values() if part.close is not None))
