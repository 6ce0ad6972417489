"""google.bytestream.ByteStream for REAPI blobs: Read (offsets, ≤ 2 MiB messages, zstd), Write streamed into
the store, QueryWriteStatus. Resource names: `resource.py`.

Writes do not resume. Each Write is one `store.put` fed by the stream itself, so whatever ends the stream
early (the client cancels or disconnects, the server stops, a half-close without finish_write) ends the put:
its disk reservation and temp file go at once. Keeping a paused upload resumable would keep its reservation,
and the daemon is local, so sending the bytes again is cheap. QueryWriteStatus therefore reports 0 for a
blob that is not stored (the spec allows less than was sent), and Bazel restarts from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from micd.errors import TierUnavailable
from micd.store import Store
from mickernel.errors import BadRequest, IntegrityError, NotFound
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import bytestream_pb2_grpc as bs_grpc
from protocols.bazel_reapi.common import OutOfRange
from protocols.bazel_reapi.compression import PIECE, Decompressor, compress_stream, decompress_bytes
from protocols.bazel_reapi.resource import ResourceName, parse_read_name, parse_write_name

__all__ = ["MAX_READ_CHUNK", "ByteStreamServicer"]

MAX_READ_CHUNK = 2 << 20


def _bounded(data: bytes) -> list[bytes]:
    if len(data) <= MAX_READ_CHUNK:
        return [data]
    return [data[i : i + MAX_READ_CHUNK] for i in range(0, len(data), MAX_READ_CHUNK)]


class ByteStreamServicer(bs_grpc.ByteStreamServicer):
    """Serves the shared CAS over ByteStream."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def Read(
        self, request: bs_pb2.ReadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bs_pb2.ReadResponse]:
        name = parse_read_name(request.resource_name)
        if request.read_offset < 0 or request.read_limit < 0:
            raise OutOfRange("negative read_offset or read_limit", (request.read_offset, request.read_limit))
        if name.compressor and request.read_limit:
            raise BadRequest("read_limit must be 0 for compressed-blobs", request.read_limit)
        if request.read_offset > name.digest.size:
            raise OutOfRange(
                f"read_offset past the end of the {name.digest.size}-byte blob", request.read_offset
            )
        blob = await self._store.get(name.digest, request.read_offset, request.read_limit or None)
        if blob is None:
            raise NotFound(f"blob {name.digest} not found")
        try:
            chunks = blob.chunks()
            if name.compressor:
                chunks = compress_stream(chunks)
            async for chunk in chunks:
                for piece in _bounded(chunk):
                    yield bs_pb2.ReadResponse(data=piece)
        except IntegrityError as exc:
            # The stored copy failed its check mid-stream and was removed: the request was fine, and a retry
            # is answered NOT_FOUND, a clean miss. INVALID_ARGUMENT would tell Bazel not to retry.
            raise TierUnavailable(
                f"stored blob {name.digest} was corrupt and has been removed; retry"
            ) from exc
        finally:
            await blob.aclose()

    async def Write(
        self, request_iterator: AsyncIterator[bs_pb2.WriteRequest], context: grpc.aio.ServicerContext
    ) -> bs_pb2.WriteResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            raise BadRequest("empty Write stream")
        name = parse_write_name(first.resource_name)
        if await self._store.contains_locally(name.digest):
            # Early return: the client stops sending; -1 marks a compressed upload (REAPI spec).
            return bs_pb2.WriteResponse(committed_size=-1 if name.compressor else name.digest.size)
        if first.write_offset != 0:
            raise BadRequest(
                "write_offset must be 0: uploads do not resume (committed_size is 0)", first.write_offset
            )
        if first.finish_write and (not name.compressor or name.digest.size <= PIECE):
            # The whole blob in one message (most of Bazel's blobs). A big compressed one streams instead: a few
            # KiB of zstd may decode to gigabytes.
            data = decompress_bytes(first.data, name.digest.size) if name.compressor else first.data
            await self._store.put_bytes(name.digest, data)
            return bs_pb2.WriteResponse(
                committed_size=len(first.data) if name.compressor else name.digest.size
            )
        stream = _WriteStream(name, first, requests)
        try:
            await self._store.put(name.digest, stream.chunks())
        except _Unfinished:
            return bs_pb2.WriteResponse(committed_size=0)  # nothing was kept: a later Write starts at 0
        return bs_pb2.WriteResponse(committed_size=stream.received if name.compressor else name.digest.size)

    async def QueryWriteStatus(
        self, request: bs_pb2.QueryWriteStatusRequest, context: grpc.aio.ServicerContext
    ) -> bs_pb2.QueryWriteStatusResponse:
        name = parse_write_name(request.resource_name)
        if await self._store.contains(name.digest):
            return bs_pb2.QueryWriteStatusResponse(committed_size=name.digest.size, complete=True)
        return bs_pb2.QueryWriteStatusResponse(committed_size=0, complete=False)


class _Unfinished(Exception):
    """The client half-closed its Write stream without finish_write; the store discards what it received."""


class _WriteStream:
    """One Write stream as the chunk iterator of a `store.put`: checks offsets and size, decodes zstd."""

    def __init__(
        self, name: ResourceName, first: bs_pb2.WriteRequest, requests: AsyncIterator[bs_pb2.WriteRequest]
    ) -> None:
        self.received = 0
        """Bytes of the stream so far (compressed bytes for compressed-blobs)."""
        self._name = name
        self._first = first
        self._requests = requests

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the uncompressed bytes; ends at finish_write, raises `_Unfinished` at a half-close without it.

        Raises:
            BadRequest: a changed resource name, a wrong write_offset, malformed zstd.
            IntegrityError: more bytes than the digest's size.
        """
        size = self._name.digest.size
        decompressor = Decompressor(size) if self._name.compressor else None
        stored = 0
        request: bs_pb2.WriteRequest | None = self._first
        while request is not None:
            if request.resource_name and request.resource_name != self._first.resource_name:
                raise BadRequest("resource_name changed within one Write stream", request.resource_name)
            if request.write_offset != self.received:
                raise BadRequest(f"write_offset {request.write_offset}, expected {self.received}")
            self.received += len(request.data)
            # One piece at a time: the store's pace is the stream's pace (a small zstd message may be huge).
            for piece in decompressor.feed(request.data) if decompressor else (request.data,):
                stored += len(piece)
                if stored > size:
                    raise IntegrityError(
                        str(self._name.digest), f"more than {size} bytes", what="upload size"
                    )
                if piece:
                    yield piece
            if request.finish_write:
                if decompressor:
                    decompressor.finish()
                return
            request = await anext(self._requests, None)
        raise _Unfinished
