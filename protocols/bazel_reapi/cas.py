"""REAPI ContentAddressableStorage (shared CAS): FindMissingBlobs (never reads bodies), BatchUpdateBlobs /
BatchReadBlobs with a per-blob google.rpc.Status, GetTree as a stream of pages.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from micd.budget import ByteBudget
from micd.store import Digest, Store
from mickernel.errors import BadRequest, MicError, NotFound
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2_grpc as re_grpc
from protocols.bazel_reapi.common import (
    MAX_BATCH_TOTAL_SIZE,
    ac_namespace,
    digest_function,
    enum_name,
    from_proto,
    from_protos,
    grpc_code,
    off_loop,
    to_proto,
)
from protocols.bazel_reapi.compression import decompress_bytes

__all__ = ["MAX_TREE_PAGE", "TREE_PAGE_BYTES", "ContentAddressableStorageServicer"]

MAX_TREE_PAGE = 1000
TREE_PAGE_BYTES = 3 << 20
"""A GetTree page closes before this many bytes of directories: gRPC refuses messages over 4 MiB by default."""
_WALK_BATCH = 256  # directories GetTree fetches with one store call and parses in one worker-thread call
_UPDATE_CHUNK = 256  # BatchUpdateBlobs entries stored concurrently before the next chunk
_FIND_CHUNK = 10_000  # FindMissingBlobs digests looked up with one store call
BATCH_BUDGET = 16 << 20
"""Blob bytes the batch calls in process may hold at once; the others wait, holding only their request. A
call's parsing, copies and response hold its bytes several times over: 64 concurrent clients of 1-4 blobs
up to 1 MiB took ~410 MiB beyond the memory tier before this bound, ~260 MiB with it (bench/RESULTS.md)."""
_T = TypeVar("_T")
_OK = status_pb2.Status(code=grpc.StatusCode.OK.value[0])


def _check_batch_size(total: int) -> None:
    """Batch calls carry at most the max_batch_total_size_bytes we advertise (bigger goes via ByteStream)."""
    if total > MAX_BATCH_TOTAL_SIZE:
        raise BadRequest(f"batch of {total} bytes exceeds max_batch_total_size_bytes {MAX_BATCH_TOTAL_SIZE}")


def _status(exc: BaseException) -> status_pb2.Status:
    return status_pb2.Status(code=grpc_code(exc).value[0], message=str(exc)[:1000])


class ContentAddressableStorageServicer(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, store: Store) -> None:
        self._store = store
        self._batch_budget = ByteBudget(BATCH_BUDGET)

    async def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.FindMissingBlobsResponse:
        ac_namespace(request.instance_name)
        function = digest_function(request.digest_function)
        digests = await off_loop(len(request.blob_digests), from_protos, request.blob_digests, function)
        missing: list[Digest] = []
        for start in range(0, len(digests), _FIND_CHUNK):  # each chunk's await lets other calls in
            missing += await self._store.find_missing(digests[start : start + _FIND_CHUNK])
        return await off_loop(len(missing), _missing_response, missing)

    async def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.BatchUpdateBlobsResponse:
        ac_namespace(request.instance_name)
        function = digest_function(request.digest_function)
        # Both sizes: compressed entries may announce far more bytes than they carry, and each is decoded whole.
        size = max(
            sum(len(r.data) for r in request.requests), sum(r.digest.size_bytes for r in request.requests)
        )
        _check_batch_size(size)
        taken = await self._batch_budget.take(size)
        try:
            return await self._update(request.requests, function)
        finally:
            self._batch_budget.give(taken)

    async def _update(
        self, requests: Iterable[re_pb2.BatchUpdateBlobsRequest.Request], function: str
    ) -> re_pb2.BatchUpdateBlobsResponse:
        entries = list(requests)
        statuses: list[status_pb2.Status] = []
        for start in range(0, len(entries), _UPDATE_CHUNK):  # each chunk's await lets other calls in
            statuses += await _all(
                self._update_one(r, function) for r in entries[start : start + _UPDATE_CHUNK]
            )
        return await off_loop(len(entries), _update_response, entries, statuses)

    async def _update_one(
        self, entry: re_pb2.BatchUpdateBlobsRequest.Request, function: str
    ) -> status_pb2.Status:
        try:
            digest = from_proto(entry.digest, function)
            if entry.compressor == re_pb2.Compressor.ZSTD:
                data = decompress_bytes(entry.data, digest.size)
            elif entry.compressor == re_pb2.Compressor.IDENTITY:
                data = entry.data
            else:
                raise BadRequest(
                    "unsupported compressor", enum_name(re_pb2.Compressor.Value, entry.compressor)
                )
            await self._store.put_bytes(digest, data)
        except MicError as exc:
            return _status(exc)
        return _OK

    async def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.BatchReadBlobsResponse:
        ac_namespace(request.instance_name)
        function = digest_function(request.digest_function)
        digests = await off_loop(len(request.digests), from_protos, request.digests, function)
        size = sum(d.size for d in digests)
        _check_batch_size(size)
        taken = await self._batch_budget.take(size)
        try:
            found = await self._store.get_many_bytes(digests)
            return await off_loop(len(found), _read_response, digests, found)
        finally:
            self._batch_budget.give(taken)

    async def GetTree(
        self, request: re_pb2.GetTreeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[re_pb2.GetTreeResponse]:
        ac_namespace(request.instance_name)
        function = digest_function(request.digest_function)
        root = from_proto(request.root_digest, function)
        page_size = min(request.page_size, MAX_TREE_PAGE) if request.page_size > 0 else MAX_TREE_PAGE
        start = _parse_page_token(request.page_token)
        position = 0  # directories walked so far; a page token is the position its page starts at
        page: list[re_pb2.Directory] = []
        page_bytes = 0
        async for batch in _walk(self._store, root, function):
            for directory, size in batch:
                position += 1
                if position <= start:
                    continue
                if page and (len(page) == page_size or page_bytes + size > TREE_PAGE_BYTES):
                    # (a single directory over the byte budget still goes, alone)
                    yield re_pb2.GetTreeResponse(directories=page, next_page_token=str(position - 1))
                    page, page_bytes = [], 0
                page.append(directory)
                page_bytes += size
        if start > position:
            raise BadRequest("page_token past the end of the tree", request.page_token)
        yield re_pb2.GetTreeResponse(directories=page, next_page_token="")


# The response builders add one entry per call: in a worker thread, the GIL can pass to the event loop
# between two calls, where one constructor call over 100k entries would hold it for ~130 ms.


def _missing_response(missing: list[Digest]) -> re_pb2.FindMissingBlobsResponse:
    response = re_pb2.FindMissingBlobsResponse()
    add = response.missing_blob_digests.add
    for digest in missing:
        add(hash=digest.hex, size_bytes=digest.size)
    return response


def _update_response(
    entries: list[re_pb2.BatchUpdateBlobsRequest.Request], statuses: list[status_pb2.Status]
) -> re_pb2.BatchUpdateBlobsResponse:
    response = re_pb2.BatchUpdateBlobsResponse()
    add = response.responses.add
    for entry, status in zip(entries, statuses, strict=True):
        add(digest=entry.digest, status=status)
    return response


def _read_response(digests: list[Digest], found: list[bytes | None]) -> re_pb2.BatchReadBlobsResponse:
    response = re_pb2.BatchReadBlobsResponse()
    add = response.responses.add
    for digest, data in zip(digests, found, strict=True):
        if data is None:
            add(digest=to_proto(digest), status=_status(NotFound(f"blob {digest} not found")))
        else:
            add(digest=to_proto(digest), data=data, status=_OK)
    return response


async def _walk(
    store: Store, root: Digest, function: str
) -> AsyncIterator[list[tuple[re_pb2.Directory, int]]]:
    """Breadth-first, de-duplicated, in batches of (Directory, encoded size); missing subtrees are omitted
    (REAPI), a missing root is NOT_FOUND.

    Each batch is one store call for at most `_WALK_BATCH` directories, parsed in a worker thread: the
    children of a 60,000-entry directory take most of a second of Python to check, which must not hold the
    event loop. Memory holds the digests still to visit and those seen, not the tree.
    """
    seen = {root}
    pending = deque([root])
    while pending:
        digests = [pending.popleft() for _ in range(min(len(pending), _WALK_BATCH))]
        blobs = await store.get_many_bytes(digests)
        if digests[0] == root and blobs[0] is None:
            raise NotFound(f"tree root {root} not found")
        # `seen` and `pending` are touched only by the thread until it returns.
        yield await asyncio.to_thread(_parse_directories, blobs, function, seen, pending)


def _parse_directories(
    blobs: list[bytes | None], function: str, seen: set[Digest], pending: deque[Digest]
) -> list[tuple[re_pb2.Directory, int]]:
    """Parse the found blobs as Directories; queue their unseen children on `pending`.

    Raises:
        BadRequest: a blob that does not parse as a Directory, or a malformed child digest.
    """
    out = []
    for data in blobs:
        if data is None:
            continue
        directory = re_pb2.Directory()
        try:
            directory.ParseFromString(data)
        except DecodeError as exc:
            raise BadRequest("a tree node does not parse as a Directory", str(exc)) from exc
        for child in from_protos([node.digest for node in directory.directories], function):
            if child not in seen:
                seen.add(child)
                pending.append(child)
        out.append((directory, directory.ByteSize() + 6))  # field tag and length prefix in the page
    return out


async def _all(calls: Iterable[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Await the calls concurrently (disk-tier I/O overlaps); a single call skips the task machinery."""
    pending = list(calls)
    if len(pending) == 1:
        return [await pending[0]]
    return list(await asyncio.gather(*pending))


def _parse_page_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise BadRequest("malformed page_token", token)
    return int(token)
