"""google.bytestream.ByteStream for REAPI blobs: Read (offsets, ≤ 2 MiB messages, zstd), resumable Write
streamed into the store, QueryWriteStatus. Resource names: `resource.py`; in-progress uploads: `uploads.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from micd.errors import BadRequest, IntegrityError, NotFound, TierUnavailable
from micd.store import Store
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import bytestream_pb2_grpc as bs_grpc
from protocols.bazel_reapi.common import OutOfRange
from protocols.bazel_reapi.compression import PIECE, Decompressor, compress_stream, decompress_bytes
from protocols.bazel_reapi.resource import ResourceName, parse_read_name, parse_write_name
from protocols.bazel_reapi.uploads import Upload, Uploads

__all__ = ["MAX_READ_CHUNK", "ByteStreamServicer"]

MAX_READ_CHUNK = 2 << 20


def _bounded(data: bytes) -> list[bytes]:
    if len(data) <= MAX_READ_CHUNK:
        return [data]
    return [data[i : i + MAX_READ_CHUNK] for i in range(0, len(data), MAX_READ_CHUNK)]


class ByteStreamServicer(bs_grpc.ByteStreamServicer):
    """Serves the shared CAS over ByteStream; one `Uploads` registry per servicer."""

    def __init__(self, store: Store, uploads: Uploads | None = None) -> None:
        self._store = store
        self.uploads = uploads or Uploads(store)

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
        whole = first.finish_write and first.write_offset == 0 and self.uploads.get(name) is None
        if whole and (not name.compressor or name.digest.size <= PIECE):
            # The whole blob in one message (most of Bazel's blobs): nothing to resume, no upload task. A big
            # compressed one streams instead: a few KiB of zstd may decode to gigabytes.
            data = decompress_bytes(first.data, name.digest.size) if name.compressor else first.data
            await self._store.put_bytes(name.digest, data)
            return bs_pb2.WriteResponse(
                committed_size=len(first.data) if name.compressor else name.digest.size
            )
        upload = self.uploads.attach(name, first.write_offset)
        try:
            response = await self._receive(upload, name, first, requests)
        except asyncio.CancelledError:
            self.uploads.detach(upload)  # the client went away: keep the upload resumable
            raise
        except BaseException:
            self.uploads.discard(upload)
            raise
        self.uploads.detach(upload)
        return response

    async def _receive(
        self,
        upload: Upload,
        name: ResourceName,
        first: bs_pb2.WriteRequest,
        requests: AsyncIterator[bs_pb2.WriteRequest],
    ) -> bs_pb2.WriteResponse:
        decompressor = Decompressor(name.digest.size - upload.committed) if name.compressor else None
        expected_offset = first.write_offset
        request: bs_pb2.WriteRequest | None = first
        while request is not None:
            if request.resource_name and request.resource_name != first.resource_name:
                raise BadRequest("resource_name changed within one Write stream", request.resource_name)
            if request.write_offset != expected_offset:
                raise BadRequest(f"write_offset {request.write_offset}, expected {expected_offset}")
            expected_offset += len(request.data)
            if decompressor is None:
                if request.data:
                    await upload.feed(request.data)
            else:
                for piece in decompressor.feed(request.data):  # one at a time: the upload's queue paces it
                    await upload.feed(piece)
            if request.finish_write:
                if decompressor:
                    decompressor.finish()
                await upload.finish()
                self.uploads.done(upload)
                return bs_pb2.WriteResponse(
                    committed_size=expected_offset if name.compressor else upload.committed
                )
            request = await anext(requests, None)
        # Half-closed without finish_write: report progress; a later Write may resume from here.
        return bs_pb2.WriteResponse(committed_size=upload.committed)

    async def QueryWriteStatus(
        self, request: bs_pb2.QueryWriteStatusRequest, context: grpc.aio.ServicerContext
    ) -> bs_pb2.QueryWriteStatusResponse:
        name = parse_write_name(request.resource_name)
        if await self._store.contains(name.digest):
            return bs_pb2.QueryWriteStatusResponse(committed_size=name.digest.size, complete=True)
        upload = self.uploads.get(name)
        return bs_pb2.QueryWriteStatusResponse(
            committed_size=upload.committed if upload else 0, complete=False
        )
