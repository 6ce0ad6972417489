"""Shared pieces of the REAPI servicers: proto ↔ `Digest` conversion, the action-cache namespace of an
instance,
and the one mapping from micd errors to gRPC status codes (used for whole calls and per-blob statuses).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from micd.errors import (
    BadRequest,
    FormatError,
    IntegrityError,
    MicError,
    NotFound,
    StoreFull,
    TierUnavailable,
    Unauthorized,
)
from micd.store import EMPTY_HEX, Digest
from micd.validate import MAX_BLOB_SIZE, parse_digest, parse_function, parse_namespace
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2

__all__ = [
    "AC_NAMESPACE",
    "GRPC_SERVER_OPTIONS",
    "MAX_BATCH_TOTAL_SIZE",
    "OutOfRange",
    "UploadBusy",
    "ac_namespace",
    "digest_function",
    "enum_name",
    "from_proto",
    "from_protos",
    "grpc_code",
    "mapped_stream",
    "mapped_unary",
    "to_proto",
]

AC_NAMESPACE = "bazel-ac"
# Batch calls carry whole blobs in one message; keep them well under the message limit below.
MAX_BATCH_TOTAL_SIZE = 4 << 20
GRPC_SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_BATCH_TOTAL_SIZE + (1 << 20)),
    ("grpc.max_send_message_length", MAX_BATCH_TOTAL_SIZE + (1 << 20)),
)
_FUNCTIONS: dict[int, str] = {re_pb2.DigestFunction.SHA256: "sha256", re_pb2.DigestFunction.BLAKE3: "blake3"}
_RESERVED_SEGMENTS = frozenset(
    {"blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs"}
)


class OutOfRange(BadRequest):
    """A read offset or limit outside the blob (gRPC OUT_OF_RANGE, as the ByteStream spec asks)."""


class UploadBusy(MicError):
    """Another live Write stream feeds this upload id (gRPC ABORTED: the client retries later)."""


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
    """`from_proto` for many digests: one regex pass over all hashes (FindMissingBlobs sends thousands).

    Raises:
        BadRequest: naming the first malformed digest.
    """
    function = parse_function(function)
    hashes = [d.hash for d in digests]
    sizes = [d.size_bytes for d in digests]
    if (
        all(len(h) == 64 for h in hashes)
        and _HEX_RUN.fullmatch("".join(hashes))
        and (not sizes or (min(sizes) >= 0 and max(sizes) <= MAX_BLOB_SIZE))
        and (0 not in sizes or all(h == EMPTY_HEX[function] for h, s in zip(hashes, sizes) if not s))
    ):
        return [Digest(function, h, s) for h, s in zip(hashes, sizes, strict=True)]
    return [from_proto(d, function) for d in digests]  # slow path: raises the precise error


def to_proto(digest: Digest) -> re_pb2.Digest:
    return re_pb2.Digest(hash=digest.hex, size_bytes=digest.size)


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
    (UploadBusy, grpc.StatusCode.ABORTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (TierUnavailable, grpc.StatusCode.UNAVAILABLE),
    (FormatError, grpc.StatusCode.DATA_LOSS),
)


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The single error → gRPC status mapping of this edge (the first matching row of `_GRPC_CODES`)."""
    return next((code for kinds, code in _GRPC_CODES if isinstance(exc, kinds)), grpc.StatusCode.INTERNAL)


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def mapped_unary(method: _Handler) -> _Handler:
    """Wrap a unary (or stream-in) handler so a MicError aborts the call with its mapped code."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (MicError, DecodeError) as exc:
            await context.abort(grpc_code(exc), str(exc))

    return wrapper  # type: ignore[return-value]


def mapped_stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Wrap a server-streaming handler so a MicError aborts the call with its mapped code."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except (MicError, DecodeError) as exc:
            await context.abort(grpc_code(exc), str(exc))

    return wrapper
