"""Shared pieces of the REAPI servicers: proto ↔ `Digest` conversion, the action-cache namespace of an
instance, the one mapping from micd errors to gRPC status codes (used for whole calls and per-blob statuses),
and `service_handler`, which wraps a servicer with request parsing and that mapping around every method.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from micd.errors import StoreFull, TierUnavailable, Unauthorized
from micd.store import EMPTY_HEX, Digest
from micd.validate import MAX_BLOB_SIZE, parse_digest, parse_function, parse_namespace
from mickernel.errors import BadRequest, FormatError, IntegrityError, MicError, NotFound
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2

__all__ = [
    "AC_NAMESPACE",
    "INLINE_ITEMS",
    "MAX_BATCH_TOTAL_SIZE",
    "OutOfRange",
    "ac_namespace",
    "digest_function",
    "enum_name",
    "from_proto",
    "from_protos",
    "grpc_code",
    "off_loop",
    "service_handler",
    "to_proto",
]

AC_NAMESPACE = "bazel-ac"
INLINE_ITEMS = 1000
"""Requests with more digests or entries than this are converted in a worker thread (`off_loop`)."""
# Batch calls carry whole blobs in one message; advertised to clients, well under the daemon's message limit.
MAX_BATCH_TOTAL_SIZE = 4 << 20
_T = TypeVar("_T")
_FUNCTIONS: dict[int, str] = {re_pb2.DigestFunction.SHA256: "sha256", re_pb2.DigestFunction.BLAKE3: "blake3"}
_RESERVED_SEGMENTS = frozenset(
    {"blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs"}
)


class OutOfRange(BadRequest):
    """A read offset or limit outside the blob (gRPC OUT_OF_RANGE, as the ByteStream spec asks)."""


def digest_function(value: int) -> str:
    """Map a request's DigestFunction to a micd function; UNKNOWN (0) means SHA256, as old clients send it.

    Raises:
        BadRequest: a function this server does not implement.
    """
    if value == re_pb2.DigestFunction.UNKNOWN:
        return "sha256"
    try:
        return _FUNCTIONS[value]
    except KeyError:
        raise BadRequest(
            "unsupported digest function", enum_name(re_pb2.DigestFunction.Value, value)
        ) from None


def enum_name(enum: Any, value: int) -> str:
    """The name of a proto enum value for an error message; proto3 accepts numbers it has no name for."""
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def from_proto(digest: re_pb2.Digest, function: str) -> Digest:
    """Validate an untrusted proto Digest (hash shape, size ≥ 0) and convert it."""
    return parse_digest(function, digest.hash, digest.size_bytes)


_HEX_RUN = re.compile(r"(?:[0-9a-f]{64})*")


def from_protos(digests: Iterable[re_pb2.Digest], function: str) -> list[Digest]:
    """`from_proto` for many digests: a few regex passes over all hashes (FindMissingBlobs sends thousands).

    Raises:
        BadRequest: naming the first malformed digest.
    """
    function = parse_function(function)
    hashes = [d.hash for d in digests]
    sizes = [d.size_bytes for d in digests]
    # The regex runs over slices: one call over 100k hashes would hold the GIL for ~50 ms (see `off_loop`).
    if (
        all(len(h) == 64 for h in hashes)
        and all(_HEX_RUN.fullmatch("".join(hashes[i : i + 4096])) for i in range(0, len(hashes), 4096))
        and (not sizes or (min(sizes) >= 0 and max(sizes) <= MAX_BLOB_SIZE))
        and (0 not in sizes or all(h == EMPTY_HEX[function] for h, s in zip(hashes, sizes, strict=True) if not s))
    ):
        return [Digest(function, h, s) for h, s in zip(hashes, sizes, strict=True)]
    return [from_proto(d, function) for d in digests]  # slow path: raises the precise error


def to_proto(digest: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=digest.hex, size_bytes=digest.size)


async def off_loop(items: int, function: Callable[..., _T], *args: Any) -> _T:
    """`function(*args)` inline when it handles at most `INLINE_ITEMS` items, else in a worker thread.

    Converting a message of 100,000 digests is a second of Python: in a thread, the event loop keeps
    serving other calls meanwhile (the GIL switches every few ms). Small requests skip the thread hop.
    """
    if items <= INLINE_ITEMS:
        return function(*args)
    return await asyncio.to_thread(function, *args)


def ac_namespace(instance_name: str) -> str:
    """The KV namespace of an instance's action cache: `bazel-ac` or `bazel-ac/<instance>` (`/` allowed)."""
    if not instance_name:
        return AC_NAMESPACE
    if any(part in _RESERVED_SEGMENTS for part in instance_name.split("/")):
        raise BadRequest("instance name uses a reserved segment", instance_name)
    return parse_namespace(f"{AC_NAMESPACE}/{instance_name}")


_GRPC_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode], ...] = (
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),  # before BadRequest: first match wins
    ((BadRequest, IntegrityError, DecodeError), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (TierUnavailable, grpc.StatusCode.UNAVAILABLE),
    (FormatError, grpc.StatusCode.DATA_LOSS),
)


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The single error → gRPC status mapping of this edge (the first matching row of `_GRPC_CODES`)."""
    return next((code for kinds, code in _GRPC_CODES if isinstance(exc, kinds)), grpc.StatusCode.INTERNAL)


def service_handler(service: ServiceDescriptor, servicer: object) -> grpc.ServiceRpcHandler:
    """The handler serving `servicer`'s methods for `service` (from a `_pb2.DESCRIPTOR`), each parsing its own
    request.

    Every method takes its request as bytes and parses it here: grpc's deserializer would turn bytes that do
    not parse into UNKNOWN before the method runs, where this makes them INVALID_ARGUMENT naming the message.
    A MicError a method raises aborts the call with its `grpc_code`.
    """
    handlers = {method.name: _handler(method, getattr(servicer, method.name)) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _parse(message_class: Any, raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(
            f"request does not parse as a {message_class.DESCRIPTOR.full_name}", str(exc)
        ) from exc


async def _parse_each(message_class: Any, raw_requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for raw in raw_requests:
        yield _parse(message_class, raw)


def _handler(method: MethodDescriptor, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    request_class = message_factory.GetMessageClass(method.input_type)
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString

    async def unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = (
                _parse_each(request_class, raw) if method.client_streaming else _parse(request_class, raw)
            )
            return await behaviour(request, context)
        except (MicError, DecodeError) as exc:
            await context.abort(grpc_code(exc), str(exc))

    async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(_parse(request_class, raw), context):
                yield response
        except (MicError, DecodeError) as exc:
            await context.abort(grpc_code(exc), str(exc))

    if method.client_streaming and not method.server_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, response_serializer=serialize)
    if method.server_streaming and not method.client_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, response_serializer=serialize)
    if not method.client_streaming:
        return grpc.unary_unary_rpc_method_handler(unary, response_serializer=serialize)
    raise ValueError(f"bidirectional method {method.full_name} is not supported")
