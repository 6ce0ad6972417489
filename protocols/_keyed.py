"""Keyed artifacts: the one translation the plain key → bytes caches (Gradle, ccache, sccache) share.

A tool's key names a record `<namespace>`/<key> whose one ref is the artifact's blob, stored in the CAS under
its sha256 by `put_stream` (so bytes two tools upload are stored once, tiered and verified like every blob).
A record whose blob is gone, or a removal's tombstone (a record with no ref: the KV has no delete), is a miss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from micd.store import Blob, Digest, Record, Store

__all__ = ["find", "open_artifact", "put_artifact", "remove"]

_TOMBSTONE = Record(b"")


async def find(store: Store, namespace: str, key: str) -> tuple[Digest, Record] | None:
    """The artifact's digest and record if its blob is present (HEAD, PROPFIND: the body is not opened)."""
    record = await store.get_record(namespace, key)
    if record is None or len(record.refs) != 1 or not await store.contains(record.refs[0]):
        return None
    return record.refs[0], record


async def open_artifact(store: Store, namespace: str, key: str) -> tuple[Blob, Record] | None:
    """The artifact's open blob (the caller sends and closes it) and its record, or None on a miss."""
    record = await store.get_record(namespace, key)
    if record is None or len(record.refs) != 1:
        return None
    blob = await store.get(record.refs[0])
    return None if blob is None else (blob, record)


async def put_artifact(
    store: Store,
    namespace: str,
    key: str,
    body: AsyncIterator[bytes],
    size: int | None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Store `body` (announced `size`, None if chunked) and point the key at it; a re-upload replaces."""
    digest = await store.put_stream("sha256", body, size)
    await store.put_record(namespace, key, Record(b"", (digest,), metadata))


async def remove(store: Store, namespace: str, key: str) -> bool:
    """Make the key a miss; False if it was one already. The blob stays: other keys may name it."""
    if await find(store, namespace, key) is None:
        return False
    await store.put_record(namespace, key, _TOMBSTONE)
    return True
