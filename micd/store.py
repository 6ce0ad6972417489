"""The storage contract: `Digest`, and the `Cas` and `Kv` protocols every tier and the tiered store implement.

Protocol modules and tests type against these protocols, never against a tier class. The core knows no wire
protocol: a digest is (function, hex, size) and a record is bytes plus the CAS digests it references.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

import blake3

__all__ = [
    "EMPTY_HEX",
    "FUNCTIONS",
    "Blob",
    "Cas",
    "Digest",
    "Kv",
    "Record",
    "SendFile",
    "SendfileBlob",
    "Store",
    "new_hasher",
]

FUNCTIONS = ("sha256", "blake3")
EMPTY_HEX = {
    "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "blake3": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
}
"""The hash of b"" per function: the only hash a size-0 digest may carry."""


def new_hasher(function: str):  # -> hashlib-like object with update()/hexdigest()
    """Return a fresh incremental hasher for `function` ("sha256" or "blake3")."""
    if function == "sha256":
        return hashlib.sha256()
    if function == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    raise ValueError(f"unknown digest function {function!r}")


@dataclass(frozen=True, slots=True)
class Digest:
    """Identity of an immutable blob: hash function, lowercase hex hash, size in bytes.

    Construct untrusted digests through `micd.validate.parse_digest`, which checks the shape.
    """

    function: str
    hex: str
    size: int

    @classmethod
    def of(cls, data: bytes, function: str = "sha256") -> Digest:
        hasher = new_hasher(function)
        hasher.update(data)
        return cls(function, hasher.hexdigest(), len(data))

    @classmethod
    def empty(cls, function: str = "sha256") -> Digest:
        return cls.of(b"", function)

    @property
    def is_empty(self) -> bool:
        """True only for the empty blob: size 0 *and* the hash of b"" (a size-0 digest with another hash names
        nothing that can exist, so it must miss, never be an empty hit)."""
        return self.size == 0 and self.hex == EMPTY_HEX[self.function]

    def __str__(self) -> str:
        return f"{self.function}:{self.hex}/{self.size}"


@dataclass(frozen=True, slots=True)
class Record:
    """A small KV value plus the CAS blobs it references.

    A record is served only when every referenced blob exists (never a hit that points at nothing).
    """

    value: bytes
    refs: tuple[Digest, ...] = ()
    metadata: tuple[tuple[str, str], ...] = field(default=())

    def meta(self, name: str) -> str | None:
        for key, val in self.metadata:
            if key == name:
                return val
        return None


class Blob(Protocol):
    """An open, readable blob range. The receiver must `aclose()` it (or exhaust `chunks()`)."""

    size: int
    """Size of the whole blob."""
    offset: int
    """First byte of the range this handle serves."""
    length: int
    """Number of bytes in the range."""

    def chunks(self) -> AsyncIterator[bytes]:
        """Yield the range in bounded chunks (≤ 1 MiB). Raises IntegrityError mid-stream on corruption."""
        ...

    async def aclose(self) -> None: ...


SendFile = Callable[[BinaryIO, int, int], Awaitable[int]]
"""`send_file(file, offset, count)`: send `count` bytes of `file` from `offset` (by the kernel: sendfile) and
return how many were sent."""


@runtime_checkable
class SendfileBlob(Blob, Protocol):
    """Optional capability of a Blob whose bytes are in a local file (a large disk-tier blob): most of its
    range can go to the socket by sendfile, not through Python, and still never complete unverified.

    A sender that can use it (the HTTP frontends, unencoded) calls `send_verified` instead of `chunks()`.
    """

    async def send_verified(self, send_file: SendFile, write: Callable[[bytes], Awaitable[object]]) -> None:
        """Send the range (once, as `chunks()` would): all but its last ≤ 1 MiB by `send_file`, never a byte
        that is not hashed yet, and the last part by `write` only once the whole blob matched its digest. On
        a mismatch, raises IntegrityError before the last part (the receiver then holds a short body, which
        the sender must not complete) and the blob is dropped. The receiver still `aclose()`s the blob."""
        ...


class Cas(Protocol):
    """Content-addressed blobs. Safe for concurrent use from one event loop. The empty blob always exists."""

    async def contains(self, digest: Digest) -> bool:
        """True if the blob is present (never reads the body)."""
        ...

    async def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Return the digests that are absent, in input order, without reading any blob body."""
        ...

    async def resolve(self, function: str, hex_: str) -> Digest | None:
        """The digest of the stored blob with this hash, or None (never reads a body): for protocols whose
        requests name a blob by hash alone (Bazel's HTTP cache), so they need not keep sizes of their own.
        `hex_` must be a valid hash of `function` (`micd.validate.parse_hash`). The empty hash resolves to the
        empty blob."""
        ...

    async def get(self, digest: Digest, offset: int = 0, limit: int | None = None) -> Blob | None:
        """Open `[offset, offset+limit)` of the blob, or None on a miss (including a detected corruption).

        Raises BadRequest if offset > size.
        """
        ...

    async def put(self, digest: Digest, chunks: AsyncIterator[bytes]) -> None:
        """Store the blob read from `chunks`, hashing while writing.

        Publishes atomically only if the bytes match `digest` (function, hash and size); otherwise raises
        IntegrityError and stores nothing. Raises StoreFull at the hard cap. Idempotent.
        """
        ...

    async def put_stream(
        self, function: str, chunks: AsyncIterator[bytes], size: int | None = None
    ) -> Digest:
        """Store a blob whose digest is not known in advance (a tool's artifact, which the tool keys by its
        own hash): hash with `function` while writing, publish under the computed digest, return it.

        `size` is the announced length (a Content-Length): it is reserved under the hard cap before the first
        byte, and a body longer or shorter raises IntegrityError with nothing stored. With `size=None` (a
        chunked body) room is reserved in growing steps as the body arrives, so StoreFull may come mid-body.
        If `chunks` raises (a client gone mid-body), that propagates and nothing is stored. Idempotent.
        """
        ...

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        """`put` for a blob already in memory."""
        ...

    async def get_bytes(self, digest: Digest) -> bytes | None:
        """Whole blob in memory, or None. For small blobs only (records, protos)."""
        ...

    async def get_many_bytes(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """`get_bytes` for a batch (BatchReadBlobs, a tree level), in input order: one call, so the blobs a
        tier holds in memory cost no coroutine each."""
        ...


class Kv(Protocol):
    """Namespaced small records (one namespace per tool and scope, e.g. "bazel-ac/main/inst")."""

    async def get_record(self, namespace: str, key: str) -> Record | None:
        """The record, or None if absent or if any referenced blob is missing."""
        ...

    async def put_record(self, namespace: str, key: str, record: Record) -> None:
        """Store or replace the record. Raises StoreFull at the hard cap."""
        ...


class Store(Cas, Kv, Protocol):
    """What protocol modules receive: one CAS shared by all tools plus namespaced KV records."""

    async def contains_locally(self, digest: Digest) -> bool:
        """True if a local tier holds the blob; never asks a remote tier. For an upload deciding whether to
        take the bytes: asking S3 there would repeat the client's own FindMissing."""
        ...
