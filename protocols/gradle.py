"""Gradle HTTP build cache (`HttpBuildCache`, as Gradle 4.4.1 speaks it and newer versions too; details and
client quirks in ../shared/docs/protocols.md §2). Paths are relative to the frontend's prefix `/gradle`.

| route       | store                                                                                     |
|-------------|-------------------------------------------------------------------------------------------|
| GET /<key>  | get_record(`gradle`, key), then its blob: 200 with the entry's own content type; 404      |
| PUT /<key>  | 413 from Content-Length alone; else put_stream(sha256, body, size), put_record; 200       |

Keys are lowercase hex (32 characters, MD5, in 4.4.1; any `[0-9a-f]{1,128}` is taken), anything else is a 400.
The entry (a tar.gz Gradle calls a build cache artifact) goes to the CAS under its sha256; the record keeps
the PUT's content type (`…build-cache-artifact.v1` from 4.x, `.v2` from current Gradle) to send back. A
re-upload replaces the record. Entries over `MAX_ENTRY_SIZE` are refused with 413 before any body byte is
read (deferred `Expect: 100-continue`, as `useExpectContinue` in Gradle 7.2+ asks). Gradle has no status
that skips one entry: on any non-2xx PUT (413 included, gradle#24060) it logs "Could not store entry" and
stops using the remote cache for the rest of that build, which carries on locally. A PUT of another content
type than those (or octet-stream) is a 400: it is not Gradle's. A miss is a 404, the one non-2xx GET Gradle
takes calmly.

Client configuration: an init script (`INIT_SCRIPT` in the state dir, mode 0600: it holds the token) that sets
`buildCache.remote` to this prefix (with the trailing `/` 4.x requires), `push = true`, the token as the Basic
password (Gradle sends it pre-emptively) and `allowInsecureProtocol` where it exists (6.0+; 7.0+ refuses
http:// without it). `MIC_GRADLE_INIT` names it: `gradle --init-script "$MIC_GRADLE_INIT" --build-cache …`.
Installing it into `$GRADLE_USER_HOME/init.d/` (so an unmodified `gradle` picks it up) is activation's job
(issue 14), as is turning caching on (`--build-cache` or `org.gradle.caching=true`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from micd.frontend import ClientConfig, ClientContext, Frontend
from micd.store import Store
from micd.validate import parse_blob_size
from mickernel.errors import BadRequest
from protocols._http import bind, expect_continue, request_body, send_blob, sub_app
from protocols._keyed import open_artifact, put_artifact

__all__ = ["FRONTEND", "INIT_SCRIPT", "MAX_ENTRY_SIZE", "NAMESPACE", "app", "client_config", "init_script"]

NAMESPACE = "gradle"
INIT_SCRIPT = "gradle-remote-cache.init.gradle"
"""`*.init.gradle`: found by both old (`*.gradle`) and new (`*.init.gradle`) init.d discovery."""
MAX_ENTRY_SIZE = 100 << 20
"""Largest entry stored (100 MiB, the default of Gradle's own build cache node): a bigger task output is
cheaper to rebuild than to ship, and one upload must not push a session's working set out of the disk tier."""
ARTIFACT_V1 = "application/vnd.gradle.build-cache-artifact.v1"
_CONTENT_TYPE = re.compile(r"application/vnd\.gradle\.build-cache-artifact\.v[0-9]{1,3}")
_KEY = re.compile(r"[0-9a-f]{1,128}")
_ROUTE = "/{key:.*}"  # matched loosely, then checked: a malformed key is a 400, not a 404


class _TooLarge(Exception):
    """A chunked body grew past `MAX_ENTRY_SIZE`."""


def _parse_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not _KEY.fullmatch(key):
        raise BadRequest("malformed Gradle cache key (lowercase hex)", key[:200])
    return key


def _too_large() -> web.Response:
    response = web.Response(status=413, text=f"entry larger than {MAX_ENTRY_SIZE} bytes\n")
    response.force_close()  # the body was not read: this connection cannot carry another request
    return response


async def _bounded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > MAX_ENTRY_SIZE:
            raise _TooLarge
        yield chunk


async def handle_get(request: web.Request, store: Store) -> web.StreamResponse:
    found = await open_artifact(store, NAMESPACE, _parse_key(request))
    if found is None:
        return web.Response(status=404, text="no such entry\n")
    blob, record = found
    return await send_blob(request, blob, content_type=record.meta("content-type") or ARTIFACT_V1)


async def handle_put(request: web.Request, store: Store) -> web.StreamResponse:
    key = _parse_key(request)
    content_type = request.headers.get("Content-Type", ARTIFACT_V1)
    if not _CONTENT_TYPE.fullmatch(content_type) and content_type != "application/octet-stream":
        raise BadRequest("not a Gradle build cache artifact", content_type[:100])
    size = None if request.content_length is None else parse_blob_size(request.content_length)
    if size is not None and size > MAX_ENTRY_SIZE:
        return _too_large()
    try:
        await put_artifact(
            store, NAMESPACE, key, _bounded(request_body(request)), size, (("content-type", content_type),)
        )
    except _TooLarge:
        return _too_large()
    return web.Response(status=200)


def app(store: Store) -> web.Application:
    """The Gradle cache's sub-application bound to `store` (normally `tiered.for_tool("gradle", …)`)."""
    return sub_app(
        [
            web.get(_ROUTE, bind(handle_get, store), allow_head=False),
            web.put(_ROUTE, bind(handle_put, store, close_failed_puts=True), expect_handler=expect_continue),
        ]
    )


def _groovy(text: str) -> str:
    """A single-quoted Groovy string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def init_script(context: ClientContext) -> str:
    """The init script pointing Gradle's remote build cache at this daemon."""
    return f"""// Generated by micd: this session's remote build cache. Rewritten at every daemon start.
gradle.settingsEvaluated {{ settings ->
    settings.buildCache {{
        remote(HttpBuildCache) {{
            url = {_groovy(context.url + "/")}
            push = true
            credentials {{
                username = 'mic'
                password = {_groovy(context.token)}
            }}
            if (delegate.hasProperty('allowInsecureProtocol')) {{
                allowInsecureProtocol = true
            }}
        }}
    }}
}}
"""


def client_config(context: ClientContext) -> ClientConfig:
    return ClientConfig(
        files={INIT_SCRIPT: init_script(context)},
        env={"MIC_GRADLE_INIT": str(context.state_dir / INIT_SCRIPT)},
    )


FRONTEND = Frontend(name="gradle", prefix="/gradle", namespaces=(NAMESPACE,), http=app, client=client_config)
