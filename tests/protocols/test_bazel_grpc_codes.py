"""The gRPC edge's one error → status mapping (`protocols.bazel_reapi.common.grpc_code`), row by row, and
requests that do not parse, on every method."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError

from mic.errors import Conflict
from micd.errors import StoreFull, TierUnavailable, Unauthorized
from micd.store import Digest
from mickernel.errors import BadRequest, FormatError, IntegrityError, NotFound
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi.common import OutOfRange, grpc_code

CASES = [
    ("range past the end: OUT_OF_RANGE although it is a BadRequest", OutOfRange("offset 9"), "OUT_OF_RANGE"),
    ("bad request", BadRequest("bad digest"), "INVALID_ARGUMENT"),
    ("bytes do not match the digest", IntegrityError("a", "b"), "INVALID_ARGUMENT"),
    ("protobuf does not parse", DecodeError("truncated"), "INVALID_ARGUMENT"),
    ("miss", NotFound("no blob"), "NOT_FOUND"),
    ("over the hard cap", StoreFull(1, 2, 3), "RESOURCE_EXHAUSTED"),
    ("no or wrong token", Unauthorized("token"), "UNAUTHENTICATED"),
    ("S3 down", TierUnavailable("s3"), "UNAVAILABLE"),
    ("unreadable stored record", FormatError("record", "bad magic"), "DATA_LOSS"),
    ("any other core error", Conflict("overlap"), "INTERNAL"),
    ("a bug", RuntimeError("boom"), "INTERNAL"),
]


@pytest.mark.parametrize(("description", "exc", "code"), CASES, ids=[c[0] for c in CASES])
def test_each_error_maps_to_its_status(description, exc, code):
    assert grpc_code(exc) == getattr(grpc.StatusCode, code), description


_REAPI = "build.bazel.remote.execution.v2"
METHODS = [
    (f"/{_REAPI}.Capabilities/GetCapabilities", "unary"),
    (f"/{_REAPI}.ContentAddressableStorage/FindMissingBlobs", "unary"),
    (f"/{_REAPI}.ContentAddressableStorage/BatchUpdateBlobs", "unary"),
    (f"/{_REAPI}.ContentAddressableStorage/BatchReadBlobs", "unary"),
    (f"/{_REAPI}.ContentAddressableStorage/GetTree", "server_stream"),
    (f"/{_REAPI}.ActionCache/GetActionResult", "unary"),
    (f"/{_REAPI}.ActionCache/UpdateActionResult", "unary"),
    ("/google.bytestream.ByteStream/Read", "server_stream"),
    ("/google.bytestream.ByteStream/Write", "client_stream"),
    ("/google.bytestream.ByteStream/QueryWriteStatus", "unary"),
]
TRUNCATED = b"\x0a\x05ab"  # field 1, 5 bytes announced, 2 sent


async def _call_raw(channel, path: str, kind: str, messages: list[bytes]) -> None:
    if kind == "unary":
        await channel.unary_unary(path)(messages[0])
    elif kind == "server_stream":
        async for _ in channel.unary_stream(path)(messages[0]):
            pass
    else:
        await channel.stream_unary(path)(iter(messages))


@pytest.mark.parametrize(("path", "kind"), METHODS, ids=[m[0].rsplit("/", 1)[1] for m in METHODS])
async def test_a_request_that_does_not_parse_is_invalid_argument(env, path, kind):
    """Bytes that are not the method's request message: INVALID_ARGUMENT naming the message, not UNKNOWN."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call_raw(env.channel, path, kind, [TRUNCATED])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "does not parse as" in err.value.details()


async def test_a_later_write_message_that_does_not_parse_is_invalid_argument(env):
    data = b"x" * 100
    digest = Digest.of(data)
    first = bs_pb2.WriteRequest(
        resource_name=f"uploads/u/blobs/{digest.hex}/{digest.size}", data=data[:10]
    ).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call_raw(
            env.channel, "/google.bytestream.ByteStream/Write", "client_stream", [first, TRUNCATED]
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert not await env.store.contains(digest)
