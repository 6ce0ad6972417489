"""Bazel's HTTP remote cache (`--remote_cache=http://…/bazel`): GET/PUT/HEAD `/ac/<sha256>` and `/cas/<sha256>`,
optionally under an instance prefix (`/<instance>/ac/<sha256>`, the instance may contain `/`). Paths here are
relative to the Bazel frontend's prefix (`protocols/bazel.py`); Bazel appends them to its cache URL.

| route                         | store                                                                 |
|-------------------------------|-----------------------------------------------------------------------|
| GET/HEAD  [/inst]/ac/<hex>    | get_record(`bazel-ac[/inst]`, `sha256:<hex>`): 200 body / 404 miss     |
| PUT       [/inst]/ac/<hex>    | body must parse as an ActionResult; refs → Record.refs; 200            |
| GET/HEAD  [/inst]/cas/<hex>   | size from `X-Digest-SizeBytes`, else `resolve("sha256", hex)`; 404 miss |
| PUT       [/inst]/cas/<hex>   | streamed `store.put` (hash checked while writing); 200                 |

The action cache is the gRPC one (`protocols.bazel_reapi`), so both transports share entries. Bazel's HTTP CAS
paths carry no size while the core's digests do: the store finds the blob by hash alone (`Cas.resolve`), so a
blob uploaded any way (gRPC, the generic CAS endpoint) is served here, and no read writes anything. Quirks
(protocols.md §1): Bazel never sends HEAD, treats 404 as a miss, needs HTTP/1.1 with Content-Length or
chunked, chokes on error bodies over 10 KiB, and sends Basic auth in URL-safe base64 (handled by
micd/auth.py). `Content-Encoding: zstd` uploads and `Accept-Encoding: zstd` downloads are for non-Bazel
clients. aiohttp's request parser already decodes gzip/deflate/br/zstd request bodies (bounded, streaming;
zstd through backports.zstd), so handlers read plain bytes; an encoded CAS upload must announce the blob's
size in `X-Digest-SizeBytes`, since Content-Length is then the encoded size.
"""

from __future__ import annotations

from aiohttp import web

from micd.store import Digest, Record, Store
from micd.validate import parse_blob_size, parse_digest, parse_hash
from mickernel.errors import BadRequest, IntegrityError
from protocols._http import CONTENT_TYPE, bind, expect_continue, request_body, send_blob, sub_app
from protocols.bazel_reapi.action_result import action_key, action_result_refs, decode_action_result
from protocols.bazel_reapi.common import ac_namespace
from protocols.bazel_reapi.compression import compress_bytes, compress_stream

__all__ = ["MAX_AC_BODY", "app"]

MAX_AC_BODY = 4 << 20
_INSTANCE = r"{instance:[A-Za-z0-9_][A-Za-z0-9_.+/-]*}"
_DECODED_BY_AIOHTTP = frozenset({"identity", "gzip", "deflate", "br", "zstd"})


def _parse_hex(request: web.Request) -> str:
    """The sha256 hash named by the path (HTTP paths carry no size)."""
    return parse_hash("sha256", request.match_info["hex"])


def _namespace(request: web.Request) -> str:
    return ac_namespace(request.match_info.get("instance", ""))


def _wants_zstd(request: web.Request) -> bool:
    """True if Accept-Encoding lists zstd with a q-value above 0 (`zstd;q=0` refuses it)."""
    for item in request.headers.get("Accept-Encoding", "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() == "zstd":
            q = params.strip().lower()
            return not q.startswith("q=") or _qvalue(q[2:]) > 0
    return False


def _qvalue(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # malformed: treat as not acceptable


def _is_encoded(request: web.Request) -> bool:
    """True if the body arrived encoded (aiohttp has decoded it); other encodings are refused."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in _DECODED_BY_AIOHTTP:
        raise BadRequest("unsupported Content-Encoding", encoding)
    return encoding != "identity"


async def _lookup(request: web.Request, store: Store) -> Digest | None:
    """The full digest of `/cas/<hex>`: the one X-Digest-SizeBytes announces, else the stored blob's with that
    hash (None: a miss)."""
    hex_ = _parse_hex(request)
    announced = request.headers.get("X-Digest-SizeBytes")
    if announced is not None:
        return parse_digest("sha256", hex_, parse_blob_size(announced))
    return await store.resolve("sha256", hex_)


async def handle_get_ac(request: web.Request, store: Store) -> web.StreamResponse:
    namespace = _namespace(request)
    record = await store.get_record(namespace, action_key("sha256", _parse_hex(request)))
    if record is None:
        return web.Response(status=404)
    if request.method == "HEAD":
        return web.Response(status=200, headers={"Content-Length": str(len(record.value))})
    if _wants_zstd(request):
        body = compress_bytes(record.value)
        return web.Response(body=body, content_type=CONTENT_TYPE, headers={"Content-Encoding": "zstd"})
    return web.Response(body=record.value, content_type=CONTENT_TYPE)


async def handle_put_ac(request: web.Request, store: Store) -> web.StreamResponse:
    namespace = _namespace(request)
    key = action_key("sha256", _parse_hex(request))
    _is_encoded(request)
    if request.content_length is not None and request.content_length > MAX_AC_BODY:
        raise BadRequest(f"action result larger than {MAX_AC_BODY} bytes", request.content_length)
    parts, size = [], 0
    async for chunk in request_body(request):
        size += len(chunk)
        if size > MAX_AC_BODY:
            raise BadRequest(f"action result larger than {MAX_AC_BODY} bytes")
        parts.append(chunk)
    body = b"".join(parts)
    result = decode_action_result(body)
    refs = await action_result_refs(store, result, "sha256")
    await store.put_record(namespace, key, Record(body, refs))
    return web.Response(status=200)


async def handle_get_cas(request: web.Request, store: Store) -> web.StreamResponse:
    _namespace(request)
    digest = await _lookup(request, store)
    if request.method == "HEAD":  # existence only: never opens or reads the body
        found = digest is not None and await store.contains(digest)
        headers = {"Content-Length": str(digest.size)} if found and digest else {}
        return web.Response(status=200 if found else 404, headers=headers)
    blob = None if digest is None else await store.get(digest)
    if blob is None:
        return web.Response(status=404)
    encoding = ("zstd", compress_stream) if _wants_zstd(request) else None
    return await send_blob(request, blob, encoding=encoding)


async def handle_put_cas(request: web.Request, store: Store) -> web.StreamResponse:
    _namespace(request)
    hex_ = _parse_hex(request)
    encoded = _is_encoded(request)
    announced = request.headers.get("X-Digest-SizeBytes")
    if announced is not None:
        size = parse_blob_size(announced)
    elif encoded or request.content_length is None:
        raise BadRequest("an encoded or chunked CAS upload needs an X-Digest-SizeBytes header")
    else:
        size = request.content_length
    digest = parse_digest("sha256", hex_, size)
    if not encoded and request.content_length is not None and request.content_length != size:
        raise IntegrityError(f"{size} bytes", f"Content-Length {request.content_length}", what="upload size")
    if await store.contains_locally(digest):
        async for _ in request_body(request):  # drain, so the keep-alive connection stays usable
            pass
    else:
        await store.put(digest, request_body(request))
    return web.Response(status=200)


def app(store: Store) -> web.Application:
    """The HTTP cache's sub-application bound to `store` (normally `tiered.for_tool("bazel")`)."""
    table = []
    for prefix in ("", "/" + _INSTANCE):
        for kind, get, put in (("ac", handle_get_ac, handle_put_ac), ("cas", handle_get_cas, handle_put_cas)):
            path = f"{prefix}/{kind}/{{hex}}"
            table += [
                web.get(path, bind(get, store), allow_head=False),
                web.head(path, bind(get, store)),
                web.put(path, bind(put, store, close_failed_puts=True), expect_handler=expect_continue),
            ]
    return sub_app(table)
