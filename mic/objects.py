"""One project inside an ObjectStore: its key layout, verified blob and tree-node reads, idempotent writes.

Layout under `<project>/`: `head` (48 bytes), `landing/<pos:016d>`, `sessions/<id>`, `trees/<hh>/<hash>`,
`blobs/<hh>/<hash>`. Blobs and nodes are addressed by BLAKE3 and every read recomputes it, so a corrupted object
is an IntegrityError, never wrong content. Immutable objects (nodes, landings) are cached in memory.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing

import blake3

from mic.errors import PreconditionFailed
from mic.formats.blob import decode_blob, encode_blob
from mic.formats.btree_node import Node, decode_node
from mic.formats.chunked import CHUNK_SIZE, decode_chunked, encode_chunked
from mic.formats.chunked import MAGIC as MICC_MAGIC
from mic.formats.head import Head, decode_head, encode_head
from mic.formats.landing import Landing, decode_landing
from mic.objectstore import Obj, ObjectStore
from mic.tree import EMPTY_ROOT
from mickernel.errors import BadRequest, IntegrityError, NotFound

__all__ = ["Project", "content_hash", "landing_key", "list_projects", "validate_project_name"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_project_name(name: str) -> str:
    """Return `name` if it is a valid project name (lowercase letters, digits, `._-`, ≤ 64 characters)."""
    if not _NAME.fullmatch(name):
        raise BadRequest("project names are 1-64 of [a-z0-9._-], starting with a letter or digit", name)
    return name


async def list_projects(store: ObjectStore) -> list[str]:
    """Names of the projects in `store` (those whose head exists)."""
    names = [key.split("/", 1)[1] for key in await store.list("_projects/")]
    heads = await asyncio.gather(*(store.get(f"{name}/head") for name in names))
    return [name for name, head in zip(names, heads, strict=True) if head is not None]


def content_hash(data: bytes) -> bytes:
    """The BLAKE3 address of a file's content."""
    return blake3.blake3(data).digest()


def _next_chunk(pieces: Iterator[bytes], whole: blake3.blake3) -> tuple[bytes, int, bytes] | None:
    """The next piece's (hash, size, MICB object), added to the `whole` file's hash; None past the last."""
    piece = next(pieces, b"")
    if not piece:
        return None
    whole.update(piece)
    return content_hash(piece), len(piece), encode_blob(piece)


def _verified(data: bytes, h: bytes, what: str) -> bytes:
    if content_hash(data) != h:
        raise IntegrityError(h.hex(), content_hash(data).hex(), what=what)
    return data


def _verified_chunk(raw: bytes, h: bytes, whole: blake3.blake3) -> bytes:
    """A chunk's bytes from its MICB object, checked against its hash and added to the `whole` file's hash."""
    chunk = _verified(decode_blob(raw), h, "chunk")
    whole.update(chunk)
    return chunk


def landing_key(position: int) -> str:
    return f"landing/{position:016d}"


def _hashed(kind: str, h: bytes) -> str:
    hexed = h.hex()
    return f"{kind}/{hexed[:2]}/{hexed}"


class Project:
    """Typed access to one project's objects in `store`."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self.store = store
        self.name = validate_project_name(name)
        self._nodes: dict[bytes, Node] = {}
        self._landings: dict[int, Landing] = {}

    def key(self, key: str) -> str:
        return f"{self.name}/{key}"

    async def get(self, key: str) -> Obj | None:
        return await self.store.get(self.key(key))

    async def put_if_absent(self, key: str, data: bytes) -> str:
        return await self.store.put_if_absent(self.key(key), data)

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        return await self.store.put_if_match(self.key(key), data, etag)

    async def ensure(self, key: str, data: bytes) -> int:
        """Create an immutable, content-addressed object; return 1 if this call wrote it, 0 if it was there."""
        try:
            await self.put_if_absent(key, data)
        except PreconditionFailed:
            return 0
        return 1

    # -- project lifecycle -------------------------------------------------------------------------------------

    async def create(self, hlc: int) -> None:
        """Create the project's head at position 0 (the empty tree). Raises PreconditionFailed if it exists.

        A marker `_projects/<name>` (outside every project: project names cannot start with `_`) lets
        `list_projects` find projects without listing every object in the store.
        """
        try:
            await self.store.put_if_absent(f"_projects/{self.name}", b"")
        except PreconditionFailed:
            pass
        await self.put_if_absent("head", encode_head(Head(0, EMPTY_ROOT, hlc)))

    async def read_head(self) -> tuple[Head, str]:
        """Return (head, etag). Raises NotFound naming the command that creates the project."""
        obj = await self.get("head")
        if obj is None:
            raise NotFound(
                f"project {self.name!r} does not exist in {self.store!r}: create it with "
                f"`mic project create {self.name}` (or point MIC_STORE_URL / --store at the store that has it)"
            )
        return decode_head(obj.data), obj.etag

    async def landing(self, position: int) -> Landing | None:
        """The landing record at `position`, or None if nothing landed there (yet)."""
        if position in self._landings:
            return self._landings[position]
        obj = await self.get(landing_key(position))
        if obj is None:
            return None
        rec = decode_landing(obj.data)
        if rec.position != position:
            raise IntegrityError(str(position), str(rec.position), what=f"landing record {landing_key(position)}")
        self._landings[position] = rec
        return rec

    # -- blobs ---------------------------------------------------------------------------------------------------

    async def put_content(self, data: bytes, digest: bytes | None = None) -> tuple[bytes, int]:
        """Store a file's bytes (MICB, or MICC + MICB chunks above 4 MiB); return (hash, objects written)."""
        if len(data) <= CHUNK_SIZE:
            h = digest or content_hash(data)
            return h, await self.ensure(_hashed("blobs", h), encode_blob(data))
        pieces = (data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE))
        h, _, hashes, written = await self.put_chunks(pieces)
        if digest is not None and digest != h:
            raise ValueError(f"put_content: the data hashes to {h.hex()}, not the digest given ({digest.hex()})")
        return h, written + await self.put_chunk_list(h, hashes)

    async def put_chunks(self, pieces: Iterator[bytes]) -> tuple[bytes, int, list[bytes], int]:
        """Store each piece of a file (CHUNK_SIZE bytes, the last one shorter) as a MICB chunk, one at a time.

        `pieces` is advanced in a worker thread (it may read a file), where each piece is hashed and compressed
        too: memory holds one chunk whatever the file's size, and the event loop stays free. Returns (the whole
        file's BLAKE3, its size, the chunk hashes, objects written). The MICC list is left to `put_chunk_list`,
        so that a caller can first check the file is the one it meant to store."""
        whole = blake3.blake3()
        hashes: list[bytes] = []
        size = written = 0
        while (chunk := await asyncio.to_thread(_next_chunk, pieces, whole)) is not None:
            chunk_hash, length, encoded = chunk
            written += await self.ensure(_hashed("blobs", chunk_hash), encoded)
            hashes.append(chunk_hash)
            size += length
        return whole.digest(), size, hashes, written

    async def put_chunk_list(self, h: bytes, chunk_hashes: list[bytes]) -> int:
        """Store the MICC list of a file stored by `put_chunks` under its hash `h`; 1 if this call wrote it."""
        return await self.ensure(_hashed("blobs", h), encode_chunked(chunk_hashes))

    async def _blob_object(self, h: bytes) -> bytes:
        obj = await self.get(_hashed("blobs", h))
        if obj is None:
            raise NotFound(f"blob {h.hex()} is missing from project {self.name!r}")
        return obj.data

    async def iter_content(self, h: bytes) -> AsyncGenerator[bytes, None]:
        """A file's bytes, chunk by chunk, each verified against its BLAKE3 as it comes (IntegrityError).

        The whole file's BLAKE3 is checked after the last chunk, by the iteration itself: content is verified
        only for a reader that reached the end. Memory holds one chunk; chunks decode in a worker thread."""
        raw = await self._blob_object(h)
        if raw[:4] != MICC_MAGIC:
            yield _verified(decode_blob(raw), h, "blob")
            return
        whole = blake3.blake3()
        for chunk_hash in decode_chunked(raw):
            chunk = await asyncio.to_thread(_verified_chunk, await self._blob_object(chunk_hash), chunk_hash, whole)
            yield chunk
        if whole.digest() != h:
            raise IntegrityError(h.hex(), whole.hexdigest(), what="blob")

    async def read_content(self, h: bytes) -> bytes:
        """Return a file's bytes, verified against its BLAKE3 (IntegrityError on mismatch)."""
        async with aclosing(self.iter_content(h)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    # -- tree nodes (NodeSource) ---------------------------------------------------------------------------------

    async def load(self, node: bytes) -> Node:
        cached = self._nodes.get(node)
        if cached is not None:
            return cached
        obj = await self.get(_hashed("trees", node))
        if obj is None:
            raise NotFound(f"tree node {node.hex()} is missing from project {self.name!r}")
        got = blake3.blake3(obj.data).digest()
        if got != node:
            raise IntegrityError(node.hex(), got.hex(), what="tree node")
        decoded = decode_node(obj.data)
        self._nodes[node] = decoded
        return decoded

    def remember(self, node_hash: bytes, node: Node) -> None:
        """Cache a node this process built (nodes are immutable, so the cache never goes stale)."""
        if len(self._nodes) > 100_000:
            self._nodes.clear()  # bound memory for very long-lived processes
        self._nodes[node_hash] = node

    async def put_nodes(self, nodes: dict[bytes, bytes]) -> int:
        """Write encoded tree nodes (idempotent); return how many were new."""
        results = await asyncio.gather(*(self.ensure(_hashed("trees", h), raw) for h, raw in nodes.items()))
        return sum(results)
