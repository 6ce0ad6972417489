"""Nx self-hosted remote cache ("Nx custom remote cache specification" v1.0.0, as nx 24.0.6 speaks it; details
and client quirks in ../shared/docs/protocols.md §3). Paths are relative to the frontend's prefix `/nx`.

| route             | store                                                                                 |
|-------------------|---------------------------------------------------------------------------------------|
| GET /v1/cache/<h> | get_record(`nx`, h), then its one blob streamed: 200 with the tar.gz, 404 on a miss    |
| PUT /v1/cache/<h> | 409 if `nx`/h exists; else put_stream(sha256, body, Content-Length), put_record; 200   |

The artifact bytes go to the CAS under their sha256 (stored once whatever tool sent them, tiered, verified on
every read); the record `nx`/<hash> names that digest. A record whose blob is gone is a miss, so a re-upload
repairs it. Quirks: PUT must answer 200 (a 202 made nx 24 retry six times and fail the task); a 401 must
carry `Content-Type: text/plain` exactly (micd/auth.py sends that); a body shorter than its Content-Length is
refused with nothing stored (put_stream checks the announced size). Nx 24 sends a decimal u64 hash; the spec
says only "string", so any safe single segment (`micd.validate.parse_key`) is accepted and anything else, a
traversal such as `..%2F` included, is a 400. A re-upload is a 409, as the spec's errors.rs asks; two
concurrent first uploads of one hash may both get 200 (the later record wins; each names a whole, verified
body).

Client configuration: `NX_SELF_HOSTED_REMOTE_CACHE_SERVER` (the prefixed URL: nx appends `/v1/cache/<hash>`
to it) and `NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN` (sent as Bearer). No `NX_NO_CLOUD`: a workspace
connected to Nx Cloud stays connected, which is the user's choice to undo, not the daemon's.
"""

from __future__ import annotations

from aiohttp import web

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.store import Record, Store
from micd.validate import parse_blob_size, parse_key
from protocols._http import bind, expect_continue, request_body, send_blob, sub_app

__all__ = ["FRONTEND", "NAMESPACE", "app", "client_config"]

NAMESPACE = "nx"
_ROUTE = "/v1/cache/{hash:.*}"  # matched loosely, then checked: a malformed hash is a 400, not a 404


def _parse_hash(request: web.Request) -> str:
    return parse_key(request.match_info["hash"])


async def handle_get_artifact(request: web.Request, store: Store) -> web.StreamResponse:
    record = await store.get_record(NAMESPACE, _parse_hash(request))
    blob = None if record is None or len(record.refs) != 1 else await store.get(record.refs[0])
    if blob is None:
        return web.Response(status=404, text="no such artifact\n")
    return await send_blob(request, blob)


async def handle_put_artifact(request: web.Request, store: Store) -> web.StreamResponse:
    key = _parse_hash(request)
    size = None if request.content_length is None else parse_blob_size(request.content_length)
    if await store.get_record(NAMESPACE, key) is not None:
        response = web.Response(status=409, text="artifact already exists\n")
        response.force_close()  # the body was not read: this connection cannot carry another request
        return response
    digest = await store.put_stream("sha256", request_body(request), size)
    await store.put_record(NAMESPACE, key, Record(b"", (digest,)))
    return web.Response(status=200)


def app(store: Store) -> web.Application:
    """The Nx cache's sub-application bound to `store` (normally `tiered.for_tool("nx", ("nx",))`)."""
    return sub_app(
        [
            web.get(_ROUTE, bind(handle_get_artifact, store), allow_head=False),
            web.put(
                _ROUTE,
                bind(handle_put_artifact, store, close_failed_puts=True),
                expect_handler=expect_continue,
            ),
        ]
    )


def client_config(context: ClientContext) -> ClientConfig:
    return ClientConfig(
        env={
            "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": context.url,
            "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": context.token,
        }
    )


FRONTEND = Frontend(name="nx", prefix="/nx", namespaces=(NAMESPACE,), http=app, client=client_config)
