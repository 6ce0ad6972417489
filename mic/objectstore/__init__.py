"""The ObjectStore contract mic's version control stands on, and `open_store` to pick an implementation.

Conditional writes are the only arbiter between concurrent landers, so every implementation must give:
`put_if_absent` creates a key only if no object exists under it (S3 `If-None-Match: *`), and `put_if_match`
replaces an object only while its ETag is still the one the caller read (S3 `If-Match`). Both raise
`PreconditionFailed` when they lose; exactly one of N concurrent callers on one key wins. A miss on `get` returns
None. Implementations: `local.LocalObjectStore` (a directory, safe across processes) and `s3.S3ObjectStore`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

from mickernel.errors import BadRequest

__all__ = ["Obj", "ObjectStore", "open_store", "validate_key"]

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True, slots=True)
class Obj:
    """An object's bytes and the ETag a later `put_if_match` must present."""

    data: bytes
    etag: str


class ObjectStore(Protocol):
    """Async key → bytes store with create-only and compare-and-swap writes. Keys are validated paths."""

    async def get(self, key: str) -> Obj | None:
        """Return the object under `key`, or None if there is none."""

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Create `key` with `data`; return its ETag. Raise PreconditionFailed if `key` already exists."""

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace `key` only if its current ETag is `etag`; return the new ETag, else raise PreconditionFailed."""

    async def list(self, prefix: str) -> list[str]:
        """Return every key starting with `prefix`, sorted."""

    async def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def validate_key(key: str) -> str:
    """Return `key` if it is a relative path of safe segments (no `..`, no empty or hidden segments).

    Raises:
        BadRequest: the key could escape the store root or is not portable between file systems and S3.
    """
    if not key or len(key) > 1024 or not all(_SEGMENT.fullmatch(seg) for seg in key.split("/")):
        raise BadRequest("invalid object key", key)
    return key


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    """Open the store named by `url`: `file:///abs/dir` or `s3://bucket/prefix`.

    Raises:
        BadRequest: the URL scheme is neither file nor s3.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from mic.objectstore.local import LocalObjectStore

        return LocalObjectStore(parsed.path)
    if parsed.scheme == "s3":
        from mic.objectstore.s3 import S3ObjectStore

        return S3ObjectStore(parsed.netloc, parsed.path.strip("/"), endpoint_url=s3_endpoint_url)
    raise BadRequest("store URL must start with file:// or s3://", url)
