"""S3 tier: CAS blobs and KV records in any S3-compatible bucket, through aioboto3.

Keys are `<prefix>/cas/<function>/<hh>/<hex>.<size>` (a zstd frame of the blob) and
`<prefix>/kv/<namespace>/<key>` (a record envelope, below). Why it looks the way it does:

- **A digest is hash and size.** The size is in the key, as in the disk tier's file names, so a request
  with the right hash and a wrong size is a miss: never a hit, and never a reason to delete the real object.
  A lookup by hash alone (`resolve`) therefore LISTs the key prefix `<hex>.`: one request, like a HEAD, and
  no permission a HEAD's 404 does not need already (without s3:ListBucket, S3 answers a missing key 403).
- **Never wrong data.** Every download is decompressed and hashed while it streams into a spool (memory for
  small blobs, an anonymous temp file for large ones) and is handed out only after the digest matched. A
  corrupt object is a miss, and it is deleted so the next upload repairs it.
- **A record answers only its own key.** A flipped bit could decode as a valid, wrong record (a wrong hit),
  and a body copied under another key would answer for it. So a record object is an envelope that binds the
  record to its namespace and key under a checksum: the disk tier's record file format, one codec for both
  (`micd.tiers.disk.kvfile`, which checks the invariants). Integers big-endian, magic `MICK`, version 1:

  | offset    | width | field                                                     |
  |-----------|-------|-----------------------------------------------------------|
  | 0         | 4     | magic `MICK`                                              |
  | 4         | 1     | version (1)                                               |
  | 5         | 2     | u16 namespace length N                                    |
  | 7         | 2     | u16 key length K                                          |
  | 9         | N + K | namespace, then key, UTF-8                                |
  | 9 + N + K | R     | the record bytes (`micd.record`)                          |
  | end - 32  | 32    | blake3 of every preceding byte                            |

  Anything that is not an intact v1 envelope naming the namespace and key asked for (bad checksum, other
  names, unknown version, truncated, or a record written before the envelope existed, which starts with
  `MICR`) is a miss and is deleted; the next upload of that key rewrites it. A writer that replaces the
  object between our GET and DELETE loses its record: one more miss, never a wrong hit.
- **Failures are contained.** Every S3 error (refused, timeout, 5xx, throttling) is logged here and raised as
  `TierUnavailable`; a miss (404) is `None`/`False`. After a failure a short, growing cool-down answers
  `TierUnavailable` at once, so a dead endpoint never adds a timeout to every client request.
- **A hung S3 never stalls a build.** Reads are on a client's path, so they have deadlines of their own
  (across all botocore attempts), far below botocore's read timeout: a HEAD, a record GET, a GET of a small
  blob and the DELETE of a corrupt object must end within `read_deadline` (2 s); a large blob's GET must
  get its response headers, and then each next chunk, within `stall_timeout` (5 s: a bound on silence, not
  on the transfer). The first timeout degrades the tier, and the cool-down then skips S3 at once. Writes
  run in the upload queue, off the client's path, under `op_timeout`.
- **Few requests.** A positive existence cache (content-addressed objects never change; hash → size, so it
  answers `resolve` too) and in-flight de-duplication (N concurrent reads, HEADs or LISTs of one digest share
  one request) prevent HEAD storms.
- **Bounded memory.** Uploads compress into a spool and go up as one PUT or as multipart parts of `part_size`;
  downloads decompress through a streaming writer; at most one part or one chunk is in memory per transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import aioboto3
import zstandard
from botocore.config import Config

from micd.blobs import CHUNK, BytesBlob, DigestBuilder, Hashing, Verifier, aiter_bytes, clamp_range
from micd.errors import TierUnavailable
from micd.record import decode_record, encode_record
from micd.store import EMPTY_HEX, Digest, Record
from micd.tiers.disk.kvfile import decode_kv_file, encode_kv_file
from micd.tiers.disk.layout import parse_blob_name
from micd.tiers.s3_health import Health, Missing
from micd.tiers.s3_spool import Sink, SpoolBlob, SpoolEntry, retrieve_exception, temp_file
from mickernel.errors import FormatError, IntegrityError

__all__ = ["S3Tier", "SpoolBlob"]  # SpoolBlob: re-exported from s3_spool for callers that type against it

log = logging.getLogger(__name__)

_INLINE = 1 << 20  # blobs up to this size are spooled in memory, larger ones in a temp file
_MAX_RECORD = 64 << 20


class S3Tier:
    """A remote tier over one bucket. Safe for concurrent use from one event loop; `open()` before use."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        existence_cache_size: int = 100_000,
        part_size: int = 8 << 20,
        concurrency: int = 32,
        connect_timeout: float = 3.0,
        read_timeout: float = 15.0,
        op_timeout: float = 120.0,
        read_deadline: float = 2.0,
        stall_timeout: float = 5.0,
        max_attempts: int = 2,
        cooldown: tuple[float, float] = (0.5, 30.0),
        spool_dir: Path | None = None,
        compression_level: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        if part_size < 5 << 20:
            raise ValueError("S3 multipart part_size must be ≥ 5 MiB")
        if existence_cache_size < 0 or concurrency < 1:
            raise ValueError("existence_cache_size must be ≥ 0 and concurrency ≥ 1")
        if read_deadline <= 0 or stall_timeout <= 0:
            raise ValueError("S3 read_deadline and stall_timeout must be > 0")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self._concurrency = concurrency
        self._health = Health(op_timeout=op_timeout, cooldown=cooldown)
        self._read_deadline = read_deadline
        self._stall_timeout = stall_timeout
        self.spool_dir = spool_dir  # where large downloads/uploads spool; None: the system temp dir
        self._level = compression_level
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},  # attempts, not retries
            max_pool_connections=concurrency,
            s3={"addressing_style": "path"} if endpoint_url else None,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._exists: OrderedDict[tuple[str, str], int] = OrderedDict()  # (function, hex) → size
        self._exists_max = existence_cache_size
        self._heads: dict[Digest, asyncio.Task[bool]] = {}
        self._lists: dict[tuple[str, str], asyncio.Task[Digest | None]] = {}
        self._downloads: dict[Digest, SpoolEntry] = {}
        self._uploads: dict[Digest, asyncio.Future[None]] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    # -- lifecycle and health ----------------------------------------------------------------------
    async def open(self) -> None:
        """Create the S3 client (standard AWS credential chain). Does not contact S3."""
        self._stack = contextlib.AsyncExitStack()
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=self._config)
        )

    async def close(self) -> None:
        """Cancel in-flight requests and close the client."""
        pending: list[asyncio.Future[Any]] = [*self._heads.values(), *self._lists.values()]
        pending += self._uploads.values()
        for task in pending + [entry.task for entry in self._downloads.values()]:
            task.cancel()
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self._client = None, None

    @property
    def state(self) -> str:
        """Health: "ok" while the last S3 call succeeded, "degraded" after a failure (until one succeeds)."""
        return self._health.state

    @property
    def errors(self) -> int:
        """S3 calls that failed (a miss is not a failure)."""
        return self._health.errors

    @property
    def last_error(self) -> str | None:
        return self._health.last_error

    def stats(self) -> dict[str, Any]:
        """Health, error count and cache sizes for `mic stats`."""
        return {
            "state": self.state,
            "errors": self.errors,
            "last_error": self.last_error,
            "existence_cache": len(self._exists),
            "inflight": len(self._heads) + len(self._lists) + len(self._downloads) + len(self._uploads),
        }

    def known(self, digest: Digest) -> bool:
        """Tell from the existence cache alone (no request) whether the blob is in S3."""
        return digest.is_empty or self._exists.get((digest.function, digest.hex)) == digest.size

    def cas_key(self, digest: Digest) -> str:
        """Object key of a blob: `<prefix>/cas/<function>/<hh>/<hex>.<size>`."""
        return f"{self._base}cas/{digest.function}/{digest.hex[:2]}/{digest.hex}.{digest.size}"

    def kv_key(self, namespace: str, key: str) -> str:
        """Object key of a record: `<prefix>/kv/<namespace>/<key>`."""
        return f"{self._base}kv/{namespace}/{key}"

    def _remember(self, digest: Digest) -> None:
        if self._exists_max == 0:
            return
        name = (digest.function, digest.hex)
        self._exists[name] = digest.size
        self._exists.move_to_end(name)
        while len(self._exists) > self._exists_max:
            self._exists.popitem(last=False)

    def _forget(self, digest: Digest) -> None:
        """Drop the blob from the existence cache (gone or corrupt); another size of its hash stays."""
        name = (digest.function, digest.hex)
        if self._exists.get(name) == digest.size:
            del self._exists[name]

    def _guard(
        self, op: str, key: str, deadline: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The health guard of one S3 call (see `s3_health.Health.guard`); TierUnavailable if not open."""
        if self._client is None:
            raise TierUnavailable("S3 tier is not open")
        return self._health.guard(op, key, deadline)

    @staticmethod
    def _deadline_in(seconds: float) -> float:
        """The event-loop time `seconds` from now (a `_guard` deadline)."""
        return asyncio.get_running_loop().time() + seconds

    # -- CAS: existence ----------------------------------------------------------------------------
    async def contains(self, digest: Digest) -> bool:
        """HEAD the blob (once: positives are cached, concurrent calls share one request)."""
        if self.known(digest):
            return True
        task = self._heads.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._head(digest))
            self._heads[digest] = task
            task.add_done_callback(functools.partial(self._head_done, digest))
            task.add_done_callback(retrieve_exception)
        return await asyncio.shield(task)

    def _head_done(self, digest: Digest, _: object) -> None:
        self._heads.pop(digest, None)

    async def _head(self, digest: Digest) -> bool:
        key = self.cas_key(digest)
        try:
            async with self._guard("HEAD", key, self._deadline_in(self._read_deadline)):
                await self._client.head_object(Bucket=self.bucket, Key=key)
        except Missing:
            return False
        self._remember(digest)
        return True

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Missing digests in input order; HEADs run with bounded concurrency. Raises TierUnavailable."""
        digests = list(digests)
        unknown = iter(dict.fromkeys(d for d in digests if not self.known(d)))
        missing: set[Digest] = set()

        async def worker() -> None:
            for digest in unknown:
                if not await self.contains(digest):
                    missing.add(digest)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._concurrency, len(digests))):
                    group.create_task(worker())
        except* TierUnavailable as failures:
            raise failures.exceptions[0] from None
        return [d for d in digests if d in missing]

    async def resolve(self, function: str, hex_: str) -> Digest | None:
        """The digest of the object stored under this hash: from the existence cache, else one LIST of its
        key prefix (concurrent calls share it; a positive answer is cached). Raises TierUnavailable."""
        if hex_ == EMPTY_HEX[function]:
            return Digest.empty(function)
        name = (function, hex_)
        size = self._exists.get(name)
        if size is not None:
            return Digest(function, hex_, size)
        task = self._lists.get(name)
        if task is None:
            task = asyncio.ensure_future(self._list(function, hex_))
            self._lists[name] = task
            task.add_done_callback(functools.partial(self._list_done, name))
            task.add_done_callback(retrieve_exception)
        return await asyncio.shield(task)

    def _list_done(self, name: tuple[str, str], _: object) -> None:
        self._lists.pop(name, None)

    async def _list(self, function: str, hex_: str) -> Digest | None:
        prefix = f"{self._base}cas/{function}/{hex_[:2]}/{hex_}."
        async with self._guard("LIST", prefix, self._deadline_in(self._read_deadline)):
            response = await self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        for item in response.get("Contents", ()):
            size = parse_blob_name(item["Key"].rpartition("/")[2])
            if size:  # size 0 with this hash names nothing; a wrong size fails verification on GET
                digest = Digest(function, hex_, size)
                self._remember(digest)
                return digest
        return None

    # -- CAS: reads --------------------------------------------------------------------------------
    async def get(
        self, digest: Digest, offset: int = 0, limit: int | None = None
    ) -> BytesBlob | SpoolBlob | None:
        """Download, decompress and verify (once for concurrent readers), then serve the range.

        Returns None on a miss or a corrupt object. Raises TierUnavailable, or BadRequest past the end.
        """
        clamp_range(digest.size, offset, limit)
        if digest.is_empty:
            return BytesBlob(b"", offset, limit)
        entry = self._downloads.get(digest)
        if entry is None:
            entry = SpoolEntry(asyncio.ensure_future(self._download(digest)), digest.size)
            self._downloads[digest] = entry
            entry.task.add_done_callback(functools.partial(self._download_done, digest, entry))
        return await entry.open(offset, limit)

    def _download_done(self, digest: Digest, entry: SpoolEntry, _: object) -> None:
        if self._downloads.get(digest) is entry:
            del self._downloads[digest]
        entry.finished()

    async def get_bytes(self, digest: Digest) -> bytes | None:
        """Whole verified blob in memory, or None (small blobs only)."""
        blob = await self.get(digest)
        if blob is None:
            return None
        return b"".join([chunk async for chunk in blob.chunks()])

    async def get_many_bytes(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """`get_bytes` for each digest, concurrently (downloads are bounded by the tier's own limits)."""
        return list(await asyncio.gather(*(self.get_bytes(d) for d in digests)))

    async def _download(self, digest: Digest) -> bytes | IO[bytes] | None:
        key = self.cas_key(digest)
        small = digest.size <= _INLINE
        spool = io.BytesIO() if small else await asyncio.to_thread(temp_file, self.spool_dir)
        verifier = Verifier(digest)
        writer = zstandard.ZstdDecompressor().stream_writer(
            Sink(spool, verifier),  # type: ignore[arg-type]  # a write()-only sink is all it needs
            write_size=CHUNK,
            closefd=False,
        )
        # A small blob's whole GET has one deadline; a large one's has a fresh one per wait.
        total = self._deadline_in(self._read_deadline)

        def deadline() -> float:
            return total if small else self._deadline_in(self._stall_timeout)

        try:
            async with self._guard("GET", key, deadline()):
                response = await self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                while True:
                    async with self._guard("GET body", key, deadline()):
                        chunk = await body.read(CHUNK)
                    if not chunk:
                        break
                    await _maybe_thread(small and len(chunk) <= 65536, writer.write, chunk)
            finally:
                body.close()
            await _maybe_thread(small, writer.flush)
            verifier.check()
        except Missing:
            spool.close()
            self._forget(digest)  # deleted behind our back (e.g. a bucket lifecycle rule)
            return None
        except (IntegrityError, zstandard.ZstdError) as exc:
            spool.close()
            await self._quarantine(digest, exc)
            return None
        except BaseException:
            spool.close()
            raise
        self._remember(digest)
        if small:
            return spool.getvalue() if isinstance(spool, io.BytesIO) else b""
        await asyncio.to_thread(spool.flush)
        return spool

    async def _quarantine(self, digest: Digest, exc: Exception) -> None:
        """Delete a corrupt object (never served) so that the next upload of this digest repairs it."""
        key = self.cas_key(digest)
        log.error("S3 object %s does not match its digest (%s); deleting it", key, exc)
        self._forget(digest)
        await self._delete_corrupt(key)

    async def _delete_corrupt(self, key: str) -> None:
        """Delete a corrupt object; if S3 fails, the next read finds it corrupt again (never serves it)."""
        try:
            async with self._guard("DELETE", key, self._deadline_in(self._read_deadline)):
                await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (Missing, TierUnavailable):
            pass

    # -- CAS: writes -------------------------------------------------------------------------------
    async def put(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        """Verify and compress into a spool, then upload (nothing is uploaded unless the bytes match).

        Raises IntegrityError on a mismatch and TierUnavailable when S3 fails.
        """
        spool = await self._compress(Verifier(digest), chunks, digest.size)
        await self._upload_spool(digest, spool)

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> Digest:
        """`put` for a blob whose digest is computed while it is compressed into the spool."""
        builder = DigestBuilder(function, size)
        spool = await self._compress(builder, chunks, size)
        digest = builder.digest()  # checked by `_compress` already: cannot raise
        await self._upload_spool(digest, spool)
        return digest

    async def _compress(self, hashing: Hashing, chunks: AsyncIterator[bytes], size: int | None) -> IO[bytes]:
        """Hash and zstd-compress `chunks` into a spool (memory up to `_INLINE` announced bytes, else a temp
        file) that the caller owns; `hashing` is checked before the frame ends (zstd refuses a frame shorter
        than the size in its header)."""
        small = size is not None and size <= _INLINE
        spool = io.BytesIO() if small else await asyncio.to_thread(temp_file, self.spool_dir)
        try:
            compressor = zstandard.ZstdCompressor(level=self._level)
            frame_size = -1 if size is None else size  # -1: the frame header names no content size
            writer = compressor.stream_writer(spool, size=frame_size, write_size=CHUNK, closefd=False)
            async for chunk in chunks:
                await _maybe_thread(small and len(chunk) <= 65536, _compress_chunk, hashing, writer, chunk)
            hashing.check()
            await _maybe_thread(small, writer.flush, zstandard.FLUSH_FRAME)
        except BaseException:
            spool.close()
            raise
        return spool

    async def _upload_spool(self, digest: Digest, spool: IO[bytes]) -> None:
        """Upload a verified spool (which this closes) unless S3 has the blob; concurrent puts of one digest
        share one upload."""
        task = None
        try:
            if digest.is_empty or self.known(digest):
                return
            # Concurrent puts of one digest (each verified above) share one upload.
            if digest not in self._uploads:
                small = isinstance(spool, io.BytesIO)
                task = asyncio.ensure_future(self._upload_owned(self.cas_key(digest), spool, small))
                self._uploads[digest] = task
                task.add_done_callback(functools.partial(self._upload_done, digest))
            pending = self._uploads[digest]
        finally:
            if task is None:
                spool.close()  # otherwise the upload task owns it
        await asyncio.shield(pending)

    def _upload_done(self, digest: Digest, task: asyncio.Future[None]) -> None:
        self._uploads.pop(digest, None)
        if not task.cancelled() and task.exception() is None:
            self._remember(digest)

    async def _upload_owned(self, key: str, spool: IO[bytes], small: bool) -> None:
        try:
            await self._upload(key, spool, small)
        finally:
            spool.close()

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        """`put` for a blob already in memory."""
        await self.put(digest, aiter_bytes(data))

    async def _upload(self, key: str, spool: IO[bytes], small: bool) -> None:
        size = spool.tell()
        if size <= self.part_size:
            body = (
                spool.getvalue()
                if isinstance(spool, io.BytesIO)
                else await asyncio.to_thread(os.pread, spool.fileno(), size, 0)
            )
            async with self._guard("PUT", key):
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
            return
        async with self._guard("CreateMultipartUpload", key):
            upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, self.part_size), start=1):
                data = await asyncio.to_thread(os.pread, spool.fileno(), self.part_size, start)
                async with self._guard("UploadPart", key):
                    part = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                    )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
                del data
            async with self._guard("CompleteMultipartUpload", key):
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                )
            raise

    # -- KV ----------------------------------------------------------------------------------------
    async def get_record(self, namespace: str, key: str) -> Record | None:
        """Return the stored record (raw: the tiered store checks its refs), or None on a miss.

        A record over `_MAX_RECORD` is a miss; one that is not an intact envelope naming `namespace` and `key`
        is a miss and is deleted. Raises TierUnavailable.
        """
        s3_key = self.kv_key(namespace, key)
        try:
            async with self._guard("GET", s3_key, self._deadline_in(self._read_deadline)):
                response = await self._client.get_object(Bucket=self.bucket, Key=s3_key)
                body = response["Body"]
                try:
                    size = response.get("ContentLength", 0)
                    data = b"" if size > _MAX_RECORD else await body.read()  # read() reads it all
                finally:
                    body.close()
        except Missing:
            return None
        if size > _MAX_RECORD:
            log.error("S3 record %s: record too large (%d > %d bytes); a miss", s3_key, size, _MAX_RECORD)
            return None
        try:
            got_namespace, got_key, raw = decode_kv_file(data)
            if (got_namespace, got_key) != (namespace, key):
                raise FormatError("S3 record", "names another record", got=(got_namespace, got_key))
            return decode_record(raw)
        except FormatError as exc:
            log.error("S3 record %s is unreadable (%s); deleting it", s3_key, exc)
        await self._delete_corrupt(s3_key)
        return None

    async def put_record(self, namespace: str, key: str, record: Record) -> None:
        """Store or replace the record object (in its envelope, bound to `namespace` and `key`)."""
        s3_key = self.kv_key(namespace, key)
        body = encode_kv_file(namespace, key, encode_record(record))
        async with self._guard("PUT", s3_key):
            await self._client.put_object(Bucket=self.bucket, Key=s3_key, Body=body)


def _compress_chunk(hashing: Hashing, writer: Any, chunk: bytes) -> None:
    hashing.update(chunk)
    writer.write(chunk)


async def _maybe_thread(inline: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Run small CPU work inline (a thread hop costs more than it), large work in a thread."""
    return fn(*args) if inline else await asyncio.to_thread(fn, *args)
