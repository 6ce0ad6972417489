"""The composition root: builds the store from config and mounts every protocol on the HTTP and gRPC servers.

This is the only module that imports `protocols`. To add a protocol, add one line below:
an HTTP protocol contributes `routes(store)` in `create_app`, a gRPC one `add_servicers(server, store)` in
`create_grpc_server`. Each gets `store.for_tool(<name>)` so metrics are kept per tool.

Daemon endpoints of its own: `/healthz` (open, for readiness probes), `/metrics` (Prometheus text) and
`/stats` (JSON for `mic stats`). Client-caused 4xx go to the `micd.access` logger, server errors to `micd`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from micd.auth import OPEN_PATHS, TokenInterceptor, auth_middleware
from micd.config import Config
from micd.metrics import Metrics
from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from micd.tiers.tiered import TieredStore
from protocols import bazel_http, bazel_reapi, cas_http

__all__ = [
    "ACTIVITY",
    "METRICS",
    "STORE",
    "Activity",
    "create_app",
    "create_grpc_server",
    "open_store",
]

GRPC_MAX_MESSAGE = 32 << 20  # ≥ 16 MiB: Bazel batches up to its own 4 MiB limit, other clients go higher.
log = logging.getLogger("micd")
access_log = logging.getLogger("micd.access")


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


STORE = web.AppKey("store", object)
METRICS = web.AppKey("metrics", Metrics)
ACTIVITY = web.AppKey("activity", Activity)
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


@web.middleware
async def _log_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
):
    """Client errors (4xx) to the access log, server errors to the daemon log; nothing else is logged."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _log_status(request, exc.status)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise
    _log_status(request, response.status)
    return response


def _log_status(request: web.Request, status: int) -> None:
    if 400 <= status < 500:
        access_log.info('%s "%s %s" %d', request.remote, request.method, request.path_qs, status)
    elif status >= 500:
        log.error('%s "%s %s" %d', request.remote, request.method, request.path_qs, status)


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
    store: Any, config: Config, *, token: str, metrics: Metrics, activity: Activity | None = None
) -> web.Application:
    """Build the HTTP application: auth on all but /healthz, daemon endpoints, then each protocol's routes."""
    activity = activity or Activity()
    app = web.Application(
        # Auth before activity: a request without the token must not keep the daemon from idling out.
        middlewares=[_log_middleware, auth_middleware(token), _activity_middleware(activity)],
        client_max_size=1 << 20,  # only for request.read(); streamed bodies are unbounded by design
    )
    app[STORE] = store
    app[METRICS] = metrics
    app[ACTIVITY] = activity
    app[_STARTED] = time.monotonic()
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/stats", handle_stats)
    app.router.add_routes(cas_http.routes(store.for_tool("cas")))
    app.router.add_routes(bazel_http.routes(store.for_tool("bazel")))
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


def create_grpc_server(
    store: Any, config: Config, *, token: str, activity: Activity | None = None
) -> grpc.aio.Server:
    """Build the gRPC server (not yet bound or started): token interceptor and each protocol's servicers."""
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(token), _ActivityInterceptor(activity or Activity())],
        options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
        ],
    )
    bazel_reapi.add_servicers(server, store.for_tool("bazel"))
    return server
