"""Turborepo remote cache (the Vercel `/v8/artifacts` API as turbo 2.11.11 speaks it; details and quirks in
../shared/docs/protocols.md §4). Paths are relative to the frontend's prefix `/turbo`.

| route                      | store                                                                        |
|----------------------------|------------------------------------------------------------------------------|
| GET  /v8/artifacts/status  | none: 200 `{"status":"enabled"}`                                             |
| POST /v8/artifacts/events  | none: body read (at most `MAX_JSON_BODY`) and dropped; 200 `{}`              |
| POST /v8/artifacts         | get_record per hash of `{"hashes":[...]}`: size, duration and tag, or null   |
| GET/HEAD /v8/artifacts/<h> | get_record(`turbo/<team>`, h), then its blob: 200 + `x-artifact-tag`; 404    |
| PUT  /v8/artifacts/<h>     | put_stream(sha256, body, Content-Length), put_record(tag, duration); 200     |

The team comes from `slug=` (TURBO_TEAM) or `teamId=` (TURBO_TEAMID); each team is its own namespace
`turbo/<team>`, and an artifact request naming no team is a 400 (turbo itself never sends one: without a team
it turns remote caching off). Artifact bytes (a zstd tar) go to the CAS under their sha256, shared with every
tool; the record keeps the `x-artifact-tag` (the HMAC of signed artifacts, which turbo checks and without
which it ignores a hit) and `x-artifact-duration` to send back. PUT answers 200 `{"urls":[…]}` (as
turborepo-remote-cache does), not Vercel's 202: the artifact is stored, verified and durable when we answer,
and turbo takes any 2xx. A re-upload replaces the record (turbo re-uploads after rejecting a bad signature).
A body shorter than its Content-Length is refused with nothing stored. Not served: OPTIONS preflight (off by
default in turbo) and the account routes of `turbo login`/`link`, which a token from the daemon never needs.

Client configuration: `TURBO_API` (the prefixed URL: turbo appends `/v8/…`), `TURBO_TOKEN` (sent as Bearer)
and `TURBO_TEAM` = `mic` (turbo disables remote caching without a team). Telemetry is the user's setting.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.store import Record, Store
from micd.validate import parse_blob_size, parse_key, parse_namespace
from mickernel.errors import BadRequest
from protocols._http import bind, expect_continue, request_body, send_blob, sub_app

__all__ = ["DEFAULT_TEAM", "FRONTEND", "MAX_JSON_BODY", "NAMESPACE", "app", "client_config"]

NAMESPACE = "turbo"
DEFAULT_TEAM = "mic"
MAX_JSON_BODY = 1 << 20
"""Largest events or batch-query body read: turbo sends a few KiB; more is not a client of ours."""
_MAX_QUERY = 1000  # hashes in one batch query
_TAG = re.compile(r"[\x21-\x7e]{1,1024}")  # printable ASCII: turbo sends base64 (44 characters)
_DURATION = re.compile(r"[0-9]{1,19}")
_ARTIFACT = "/v8/artifacts/{hash:.*}"  # matched loosely, then checked: a malformed hash is a 400, not a 404


def parse_team(request: web.Request) -> str:
    """The namespace of the team named by `slug=` or `teamId=` (one of them; both only if equal)."""
    slug, team_id = request.query.get("slug"), request.query.get("teamId")
    if slug is not None and team_id is not None and slug != team_id:
        raise BadRequest("slug= and teamId= name different teams", f"{slug} / {team_id}")
    team = slug if slug is not None else team_id
    if not team:
        raise BadRequest("no team: pass slug= (TURBO_TEAM) or teamId= (TURBO_TEAMID)")
    if "/" in team:
        raise BadRequest("malformed team", team)
    return parse_namespace(f"{NAMESPACE}/{team}")


def parse_metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The artifact headers to keep: `x-artifact-tag` and `x-artifact-duration` (each optional)."""
    kept = []
    for header, pattern in (("x-artifact-tag", _TAG), ("x-artifact-duration", _DURATION)):
        value = request.headers.get(header)
        if value is not None:
            if not pattern.fullmatch(value):
                raise BadRequest(f"malformed {header}", value[:100])
            kept.append((header, value))
    return tuple(kept)


async def _read_json(request: web.Request) -> bytes:
    """The whole (small) body, BadRequest past `MAX_JSON_BODY`."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise BadRequest(f"body larger than {MAX_JSON_BODY} bytes", request.content_length)
    parts, size = [], 0
    async for chunk in request_body(request):
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise BadRequest(f"body larger than {MAX_JSON_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _lookup(request: web.Request, store: Store, key: str) -> Record | None:
    record = await store.get_record(parse_team(request), parse_key(key))
    return record if record is not None and len(record.refs) == 1 else None


async def handle_status(request: web.Request, store: Store) -> web.StreamResponse:
    return web.json_response({"status": "enabled"})


async def handle_events(request: web.Request, store: Store) -> web.StreamResponse:
    await _read_json(request)  # usage analytics for Vercel's dashboard: nothing to keep
    return web.json_response({})


async def handle_query(request: web.Request, store: Store) -> web.StreamResponse:
    try:
        hashes = json.loads(await _read_json(request))["hashes"]
    except (ValueError, TypeError, KeyError) as exc:
        raise BadRequest('expected a JSON body {"hashes": [...]}') from exc
    if (
        not isinstance(hashes, list)
        or len(hashes) > _MAX_QUERY
        or not all(isinstance(h, str) for h in hashes)
    ):
        raise BadRequest(f'"hashes" must be a list of at most {_MAX_QUERY} strings')
    answer: dict[str, object] = {}
    for key in hashes:
        record = await _lookup(request, store, key)
        if record is None or not await store.contains(record.refs[0]):
            answer[key] = None
            continue
        found: dict[str, object] = {
            "size": record.refs[0].size,
            "taskDurationMs": int(record.meta("x-artifact-duration") or 0),
        }
        tag = record.meta("x-artifact-tag")
        if tag is not None:
            found["tag"] = tag
        answer[key] = found
    return web.json_response(answer)


async def handle_get_artifact(request: web.Request, store: Store) -> web.StreamResponse:
    record = await _lookup(request, store, request.match_info["hash"])
    if record is None:
        return web.Response(status=404, text="no such artifact\n")
    digest = record.refs[0]
    if request.method == "HEAD":  # existence only: never opens or reads the body
        if not await store.contains(digest):
            return web.Response(status=404)
        return web.Response(status=200, headers={"Content-Length": str(digest.size), **dict(record.metadata)})
    blob = await store.get(digest)
    if blob is None:
        return web.Response(status=404, text="no such artifact\n")
    return await send_blob(request, blob, headers=dict(record.metadata))


async def handle_put_artifact(request: web.Request, store: Store) -> web.StreamResponse:
    namespace, key = parse_team(request), parse_key(request.match_info["hash"])
    metadata = parse_metadata(request)
    size = None if request.content_length is None else parse_blob_size(request.content_length)
    digest = await store.put_stream("sha256", request_body(request), size)
    await store.put_record(namespace, key, Record(b"", (digest,), metadata))
    team = namespace.removeprefix(NAMESPACE + "/")
    return web.json_response({"urls": [f"{team}/{key}"]})


def app(store: Store) -> web.Application:
    """The Turborepo cache's sub-application bound to `store` (normally `tiered.for_tool("turbo", …)`)."""
    return sub_app(
        [  # the fixed paths first: aiohttp tries routes in order, and `{hash}` would match them too
            web.get("/v8/artifacts/status", bind(handle_status, store), allow_head=False),
            web.post("/v8/artifacts/events", bind(handle_events, store)),
            web.post("/v8/artifacts", bind(handle_query, store)),
            web.get(_ARTIFACT, bind(handle_get_artifact, store), allow_head=False),
            web.head(_ARTIFACT, bind(handle_get_artifact, store)),
            web.put(
                _ARTIFACT,
                bind(handle_put_artifact, store, close_failed_puts=True),
                expect_handler=expect_continue,
            ),
        ]
    )


def client_config(context: ClientContext) -> ClientConfig:
    return ClientConfig(
        env={"TURBO_API": context.url, "TURBO_TOKEN": context.token, "TURBO_TEAM": DEFAULT_TEAM}
    )


FRONTEND = Frontend(name="turbo", prefix="/turbo", namespaces=(NAMESPACE,), http=app, client=client_config)
