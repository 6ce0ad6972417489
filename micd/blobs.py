"""Small helpers shared by tiers: an in-memory `Blob`, chunk iteration, and the hash sinks of the write
paths: `Verifier` (the digest is announced) and `DigestBuilder` (the digest is computed, `Cas.put_stream`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from micd.store import Digest, new_hasher
from mickernel.errors import BadRequest, IntegrityError

__all__ = ["CHUNK", "BytesBlob", "DigestBuilder", "Hashing", "Verifier", "aiter_bytes", "clamp_range"]

CHUNK = 1 << 20


def clamp_range(size: int, offset: int, limit: int | None) -> int:
    """Return the length of `[offset, offset+limit)` within a blob of `size`; BadRequest past the end."""
    if offset < 0 or offset > size:
        raise BadRequest("read offset past the end of the blob", offset)
    if limit is not None and limit < 0:
        raise BadRequest("negative read limit", limit)
    remaining = size - offset
    return remaining if limit is None or limit == 0 else min(limit, remaining)


async def aiter_bytes(data: bytes, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Yield `data` in bounded chunks (one empty iteration for b"")."""
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        yield bytes(view[start : start + chunk])


class BytesBlob:
    """A `Blob` over bytes already in memory."""

    def __init__(self, data: bytes, offset: int = 0, limit: int | None = None) -> None:
        self.size = len(data)
        self.offset = offset
        self.length = clamp_range(self.size, offset, limit)
        self._data = data

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in aiter_bytes(self._data[self.offset : self.offset + self.length]):
            yield chunk

    async def read_all(self) -> bytes:
        return self._data[self.offset : self.offset + self.length]

    async def aclose(self) -> None:
        return None


class Verifier:
    """Hashes bytes as they pass and checks them against the announced digest at the end."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self.size = 0
        self._hasher = new_hasher(digest.function)

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.digest.size:
            raise IntegrityError(str(self.digest), f"more than {self.digest.size} bytes", what="upload size")
        self._hasher.update(chunk)

    def check(self) -> None:
        """Raise IntegrityError unless the bytes seen match the digest exactly."""
        if self.size != self.digest.size:
            raise IntegrityError(str(self.digest), f"{self.size} bytes", what="upload size")
        got = self._hasher.hexdigest()
        if got != self.digest.hex:
            raise IntegrityError(self.digest.hex, got)


class DigestBuilder:
    """Hashes a blob whose digest is known only at its end (a tool's artifact, keyed by the tool's own hash).

    With an announced `size`, IntegrityError as soon as more bytes pass, or at `digest()` if fewer did.
    """

    def __init__(self, function: str, size: int | None = None) -> None:
        if size is not None and size < 0:
            raise ValueError(f"announced size must be ≥ 0 (got {size})")
        self.function = function
        self.announced = size
        self.size = 0
        self._hasher = new_hasher(function)

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.announced is not None and self.size > self.announced:
            raise IntegrityError(f"{self.announced} bytes", f"more than {self.announced}", what="upload size")
        self._hasher.update(chunk)

    def check(self) -> None:
        """Raise IntegrityError if the bytes seen fall short of the announced size."""
        if self.announced is not None and self.size != self.announced:
            raise IntegrityError(f"{self.announced} bytes", f"{self.size} bytes", what="upload size")

    def digest(self) -> Digest:
        """The digest of the bytes seen (after `check`)."""
        self.check()
        return Digest(self.function, self._hasher.hexdigest(), self.size)


class Hashing(Protocol):
    """What a write path feeds each chunk through before writing it: a `Verifier` or a `DigestBuilder`."""

    def update(self, chunk: bytes) -> None: ...

    def check(self) -> None:
        """Raise IntegrityError unless the bytes seen are all there were to be."""
