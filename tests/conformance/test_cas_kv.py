"""CAS/KV conformance: every behaviour of `micd.store.Cas` and `Kv`, run against every backend in conftest."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator

import pytest

from micd.store import EMPTY_HEX, Digest, Record
from mickernel.errors import BadRequest, IntegrityError

from .conftest import Backend

FUNCTIONS = ["sha256", "blake3"]
# 3 MiB is above the disk backend's verify_limit (1 MiB): exercises the streaming read path too.
SIZES = [1, 4096, 3 << 20]


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int = 65536, pause: bool = False) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pause:
            await asyncio.sleep(0)
        yield data[start : start + size]


async def read(cas_store, digest: Digest, offset: int = 0, limit: int | None = None) -> bytes | None:
    handle = await cas_store.get(digest, offset, limit)
    if handle is None:
        return None
    parts = []
    async for chunk in handle.chunks():
        assert len(chunk) <= 1 << 20
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("size", SIZES)
async def test_round_trip(cas_store, function, size):
    data = blob(size, seed=size)
    digest = Digest.of(data, function)
    assert await cas_store.get(digest) is None
    assert not await cas_store.contains(digest)
    await cas_store.put(digest, chunked(data))
    assert await cas_store.contains(digest)
    assert await read(cas_store, digest) == data
    assert await cas_store.get_bytes(digest) == data
    handle = await cas_store.get(digest)
    assert (handle.size, handle.offset, handle.length) == (size, 0, size)
    await handle.aclose()


@pytest.mark.parametrize("size", [4096, 3 << 20])
@pytest.mark.parametrize(
    ("offset", "limit"),
    [(0, None), (0, 0), (1, None), (100, 10), (7, 1 << 30), ("end", None), ("end-1", 5)],
)
async def test_offset_and_limit(cas_store, size, offset, limit):
    data = blob(size, seed=3)
    digest = Digest.of(data)
    await cas_store.put_bytes(digest, data)
    if offset == "end":
        offset = size
    elif offset == "end-1":
        offset = size - 1
    want = data[offset:] if not limit else data[offset : offset + limit]
    handle = await cas_store.get(digest, offset, limit)
    assert (handle.size, handle.offset, handle.length) == (size, offset, len(want))
    await handle.aclose()
    assert await read(cas_store, digest, offset, limit) == want


@pytest.mark.parametrize("size", [4096, 3 << 20])
async def test_offset_past_end_is_bad_request(cas_store, size):
    data = blob(size)
    digest = Digest.of(data)
    await cas_store.put_bytes(digest, data)
    with pytest.raises(BadRequest):
        await cas_store.get(digest, size + 1)
    with pytest.raises(BadRequest):
        await cas_store.get(digest, 0, -1)
    assert await read(cas_store, digest) == data  # the bad request changed nothing


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("size", [10, 3 << 20])
async def test_wrong_hash_is_rejected_and_not_stored(cas_store, function, size):
    data = blob(size, seed=1)
    digest = Digest.of(data, function)
    tampered = bytearray(data)
    tampered[size // 2] ^= 0x01
    with pytest.raises(IntegrityError):
        await cas_store.put(digest, chunked(bytes(tampered)))
    assert not await cas_store.contains(digest)
    assert await cas_store.get(digest) is None
    assert await cas_store.find_missing([digest]) == [digest]
    await cas_store.put_bytes(digest, data)  # and the right bytes still go in afterwards
    assert await read(cas_store, digest) == data


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("delta", [-1, +1, -4096, +4096])
async def test_wrong_size_is_rejected_and_not_stored(cas_store, function, delta):
    data = blob(8192, seed=2)
    real = Digest.of(data, function)
    announced = Digest(function, real.hex, real.size + delta)
    with pytest.raises(IntegrityError):
        await cas_store.put(announced, chunked(data))
    # A body that is a prefix or an extension of the real one must not be stored under any name.
    body = data[:delta] if delta < 0 else data + blob(delta, seed=9)
    with pytest.raises(IntegrityError):
        await cas_store.put(real, chunked(body))
    assert await cas_store.find_missing([real, announced]) == [real, announced]
    assert await cas_store.resolve(function, real.hex) is None


@pytest.mark.parametrize("function", FUNCTIONS)
async def test_empty_blob_always_present(cas_store, function):
    empty = Digest.empty(function)
    assert await cas_store.contains(empty)
    assert await cas_store.find_missing([empty]) == []
    assert await cas_store.get_bytes(empty) == b""
    assert await read(cas_store, empty) == b""
    await cas_store.put_bytes(empty, b"")
    with pytest.raises(IntegrityError):
        await cas_store.put(empty, chunked(b"not empty"))
    assert await cas_store.get_bytes(empty) == b""


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("size", SIZES)
async def test_resolve_finds_the_digest_by_hash_alone(cas_store, function, size):
    data = blob(size, seed=40 + size)
    digest = Digest.of(data, function)
    assert await cas_store.resolve(function, digest.hex) is None
    await cas_store.put(digest, chunked(data))
    assert await cas_store.resolve(function, digest.hex) == digest
    other = "sha256" if function == "blake3" else "blake3"
    assert await cas_store.resolve(other, digest.hex) is None  # the hash is only a name under its function
    assert await cas_store.resolve(other, Digest.of(data, other).hex) is None


@pytest.mark.parametrize("function", FUNCTIONS)
async def test_resolve_of_the_empty_hash_is_the_empty_blob(cas_store, function):
    assert await cas_store.resolve(function, EMPTY_HEX[function]) == Digest.empty(function)


async def test_find_missing_keeps_input_order(cas_store):
    present = [Digest.of(blob(100, seed=i), FUNCTIONS[i % 2]) for i in range(10)]
    for i, digest in enumerate(present):
        await cas_store.put_bytes(digest, blob(100, seed=i))
    absent = [Digest.of(blob(100, seed=100 + i), FUNCTIONS[i % 2]) for i in range(10)]
    mixed = present + absent + [Digest.empty()]
    random.Random(7).shuffle(mixed)
    expected = [d for d in mixed if d in absent]
    assert await cas_store.find_missing(mixed) == expected
    assert await cas_store.find_missing(iter(mixed)) == expected  # any iterable, e.g. a generator
    assert await cas_store.find_missing(absent[:3] + absent[:3]) == absent[:3] + absent[:3]


class _OpenAudit:
    """Records every file opened (audit event "open") while active; hooks cannot be removed, so one global."""

    paths: list[str] | None = None

    @classmethod
    def install(cls) -> None:
        if not getattr(sys, "_mic_open_audit", False):
            sys.addaudithook(cls._hook)
            sys._mic_open_audit = True  # type: ignore[attr-defined]

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.paths is not None and isinstance(args[0], str | bytes | os.PathLike):
            cls.paths.append(os.fsdecode(args[0]))


async def test_find_missing_contains_and_resolve_never_read_bodies(cas_backend: Backend):
    backend = cas_backend
    cas_store = backend.store
    digests = [Digest.of(blob(5000, seed=i)) for i in range(20)]
    for i, digest in enumerate(digests):
        await cas_store.put_bytes(digest, blob(5000, seed=i))
    _OpenAudit.install()
    _OpenAudit.paths = []
    try:
        assert await cas_store.find_missing(digests) == []
        assert all([await cas_store.contains(d) for d in digests])
        assert [await cas_store.resolve(d.function, d.hex) for d in digests] == digests
        opened = list(_OpenAudit.paths)
    finally:
        _OpenAudit.paths = None
    if backend.files_root is not None:
        root = str(backend.files_root)
        assert [p for p in opened if p.startswith(root)] == []
    # Control: the audit does see a real read, so the assertion above can fail.
    _OpenAudit.paths = []
    try:
        assert await cas_store.get_bytes(digests[0]) is not None
        seen = list(_OpenAudit.paths)
    finally:
        _OpenAudit.paths = None
    if backend.files_root is not None:
        assert any(p.startswith(str(backend.files_root)) for p in seen)


async def test_put_is_idempotent_and_keeps_the_first_copy_on_bad_retry(cas_store):
    data = blob(3 << 20, seed=5)
    digest = Digest.of(data)
    await cas_store.put_bytes(digest, data)
    await cas_store.put(digest, chunked(data))
    await cas_store.put_bytes(digest, data)
    bad = bytearray(data)
    bad[0] ^= 0xFF
    with pytest.raises(IntegrityError):
        await cas_store.put_bytes(digest, bytes(bad))
    assert await read(cas_store, digest) == data
    assert await cas_store.find_missing([digest]) == []


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_concurrent_puts_of_one_digest(cas_store, size):
    data = blob(size, seed=11)
    digest = Digest.of(data, "blake3")
    await asyncio.gather(*(cas_store.put(digest, chunked(data, 8192, pause=True)) for _ in range(8)))
    assert await read(cas_store, digest) == data
    used = getattr(cas_store, "used_bytes", None)
    if used is not None:
        assert used == size  # stored and counted once


async def test_concurrent_good_and_bad_puts_of_one_digest(cas_store):
    data = blob(200_000, seed=12)
    digest = Digest.of(data)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    results = await asyncio.gather(
        *(cas_store.put(digest, chunked(bad if i % 2 else data, 4096, pause=True)) for i in range(6)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [type(None), IntegrityError] * 3
    assert await read(cas_store, digest) == data


async def test_get_handle_can_be_closed_early(cas_store):
    data = blob(3 << 20, seed=13)
    digest = Digest.of(data)
    await cas_store.put_bytes(digest, data)
    handle = await cas_store.get(digest)
    agen = handle.chunks()
    first = await agen.__anext__()
    assert data.startswith(first)
    await agen.aclose()
    await handle.aclose()
    assert await read(cas_store, digest) == data


async def test_records_round_trip(cas_store):
    refs = []
    for i in range(3):
        data = blob(64, seed=20 + i)
        refs.append(Digest.of(data, FUNCTIONS[i % 2]))
        await cas_store.put_bytes(refs[-1], data)
    record = Record(b"\x00value\xff", tuple(refs), (("content-type", "application/x"), ("tag", "ü")))
    assert await cas_store.get_record("bazel-ac/main", "k1") is None
    await cas_store.put_record("bazel-ac/main", "k1", record)
    assert await cas_store.get_record("bazel-ac/main", "k1") == record
    assert await cas_store.get_record("bazel-ac/other", "k1") is None  # namespaces are separate
    assert await cas_store.get_record("bazel-ac/main", "k2") is None
    replaced = Record(b"second", tuple(refs[:1]))
    await cas_store.put_record("bazel-ac/main", "k1", replaced)
    assert await cas_store.get_record("bazel-ac/main", "k1") == replaced
    await cas_store.put_record("turbo/team", "k1", Record(b""))
    assert await cas_store.get_record("turbo/team", "k1") == Record(b"")
    assert await cas_store.get_record("bazel-ac/main", "k1") == replaced


async def test_get_many_bytes_answers_each_digest_in_input_order(cas_store):
    stored = [blob(100 + i, seed=900 + i) for i in range(3)]
    for data in stored:
        await cas_store.put_bytes(Digest.of(data), data)
    absent = Digest.of(blob(50, seed=999))
    wanted = [
        Digest.of(stored[2]), absent, Digest.empty(), Digest.of(stored[0]), Digest.of(stored[2]),
        Digest.of(stored[1], "blake3"),  # same bytes under another function: not stored
    ]  # fmt: skip
    got = await cas_store.get_many_bytes(wanted)
    assert got == [stored[2], None, b"", stored[0], stored[2], None]
    assert await cas_store.get_many_bytes([]) == []


# -- put_stream: blobs whose digest is computed from their bytes (tool caches) -----------------------------


class ClientGone(ConnectionResetError):
    """What a request body raises when its client vanishes mid-body."""


async def vanishing(data: bytes, after: int) -> AsyncIterator[bytes]:
    """A body that yields `after` bytes of `data`, then fails as a dropped connection does."""
    async for chunk in chunked(data[:after], 4096):
        yield chunk
    raise ClientGone("client went away")


def _leftover_temp_files(backend: Backend) -> list:
    """Temp files a disk tier left under its root (its lock and journal aside); [] for other backends."""
    if backend.files_root is None:
        return []
    tmp = backend.files_root / "v1" / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file() and p.name != "lock" and p.parent.name != "journal"]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("announced", [True, False], ids=["announced", "unknown-size"])
async def test_put_stream_stores_under_the_computed_digest(cas_store, function, size, announced):
    data = blob(size, seed=40 + size)
    digest = await cas_store.put_stream(function, chunked(data), size if announced else None)
    assert digest == Digest.of(data, function)
    assert await cas_store.contains(digest)
    assert await read(cas_store, digest) == data


@pytest.mark.parametrize("size", [4096, 3 << 20])
@pytest.mark.parametrize("delta", [-1, +1, -4096])
async def test_put_stream_body_other_than_announced_is_rejected_and_not_stored(cas_backend, size, delta):
    cas_store = cas_backend.store
    data = blob(size, seed=41)
    with pytest.raises(IntegrityError):
        await cas_store.put_stream("sha256", chunked(data), size + delta)
    shorter = data[: size - 1]  # what a body cut short of its length would be stored as
    assert await cas_store.find_missing([Digest.of(data), Digest.of(shorter)]) == [
        Digest.of(data), Digest.of(shorter)
    ]  # fmt: skip
    assert _leftover_temp_files(cas_backend) == []


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("announced", [0, None])
async def test_put_stream_of_an_empty_body_is_the_empty_blob(cas_store, function, announced):
    digest = await cas_store.put_stream(function, chunked(b""), announced)
    assert digest == Digest.empty(function)
    assert await cas_store.get_bytes(digest) == b""
    with pytest.raises(IntegrityError):
        await cas_store.put_stream(function, chunked(b"x"), 0)


@pytest.mark.parametrize("size", [4096, 3 << 20])
@pytest.mark.parametrize("announced", [True, False], ids=["announced", "unknown-size"])
async def test_put_stream_from_a_client_that_vanishes_stores_nothing(cas_backend, size, announced):
    cas_store = cas_backend.store
    data = blob(size, seed=42)
    cut = size // 2
    with pytest.raises(ClientGone):
        await cas_store.put_stream("sha256", vanishing(data, cut), size if announced else None)
    assert await cas_store.find_missing([Digest.of(data), Digest.of(data[:cut])]) == [
        Digest.of(data), Digest.of(data[:cut])
    ]  # fmt: skip
    assert _leftover_temp_files(cas_backend) == []


@pytest.mark.parametrize("size", [1000, 3 << 20])
async def test_put_stream_dedupes_with_put_and_itself(cas_store, size):
    data = blob(size, seed=43)
    digest = Digest.of(data)
    await cas_store.put(digest, chunked(data))
    sizes = [size, None, size, None]
    results = await asyncio.gather(
        *(cas_store.put_stream("sha256", chunked(data, 8192, pause=True), n) for n in sizes)
    )
    assert results == [digest] * 4
    assert await read(cas_store, digest) == data
    used = getattr(cas_store, "used_bytes", None)
    if used is not None:
        assert used == size  # stored and counted once
