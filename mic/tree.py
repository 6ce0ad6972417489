"""Persistent B+ tree of paths: one changed path rewrites only the O(log n) nodes on its root-to-leaf path.

Nodes are immutable MICN objects addressed by their BLAKE3, so unchanged subtrees are shared between versions
and two trees diff by walking both in key order and skipping every subtree whose hash is equal on both sides:
the cost is proportional to the change (times the depth), not to the tree size.

Shape: leaves hold up to `FANOUT` (path → FileEntry) pairs; internal nodes hold up to `FANOUT` child references
keyed by the child's first path. An over-full node splits into even parts; an emptied node disappears and a root
with a single child collapses, so the height stays logarithmic. (Under-full nodes are not merged: that keeps a
change local to its path, at the cost of some slack after heavy deletion.) Everything here is pure apart from
`NodeSource.load`, so the caller decides when the new nodes are written.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, TypeVar

import blake3

from mic.formats.btree_node import ChildRef, FileEntry, Node, encode_node

__all__ = ["EMPTY_ROOT", "EMPTY_TREE_BYTES", "FANOUT", "NodeSource", "Tree", "node_hash"]

FANOUT = 64
EMPTY_TREE_BYTES = encode_node(Node(0, (), ()))
_T = TypeVar("_T")
_Change = tuple[str, FileEntry | None]


def node_hash(raw: bytes) -> bytes:
    """The address of an encoded node."""
    return blake3.blake3(raw).digest()


EMPTY_ROOT = node_hash(EMPTY_TREE_BYTES)


class NodeSource(Protocol):
    async def load(self, node: bytes) -> Node:
        """Return the decoded node with this hash (verified), raising NotFound/IntegrityError otherwise."""


def _split(items: list[_T], limit: int = FANOUT) -> list[list[_T]]:
    if len(items) <= limit:
        return [items]
    parts = -(-len(items) // limit)
    size, extra = divmod(len(items), parts)
    out: list[list[_T]] = []
    at = 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append(items[at : at + n])
        at += n
    return out


def _count(node: Node) -> int:
    if node.level == 0:
        return len(node.keys)
    return sum(ref.count for ref in node.values if isinstance(ref, ChildRef))


class Tree:
    """Operations on trees stored in `source`; `new_nodes` collects encoded nodes made by `apply`."""

    def __init__(self, source: NodeSource) -> None:
        self.source = source

    async def load(self, h: bytes) -> Node:
        if h == EMPTY_ROOT:
            return Node(0, (), ())
        return await self.source.load(h)

    # -- reads -------------------------------------------------------------------------------------------------

    async def lookup(self, root: bytes, path: str) -> FileEntry | None:
        """Return the entry for `path`, or None."""
        node = await self.load(root)
        while True:
            i = bisect_right(node.keys, path) - 1
            if i < 0:
                return None
            if node.level == 0:
                return node.values[i] if node.keys[i] == path else None  # type: ignore[return-value]
            node = await self.load(node.values[i].hash)

    async def items(self, root: bytes, prefix: str = "") -> AsyncIterator[tuple[str, FileEntry]]:
        """Yield (path, entry) in path order for every path starting with `prefix`."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
        async for item in self._items(await self.load(root), prefix, end):
            yield item

    async def _items(self, node: Node, prefix: str, end: str | None) -> AsyncIterator[tuple[str, FileEntry]]:
        start = max(0, bisect_right(node.keys, prefix) - 1)
        stop = len(node.keys) if end is None else bisect_right(node.keys, end)
        if node.level == 0:
            for key, value in zip(node.keys[start:stop], node.values[start:stop], strict=True):
                if key.startswith(prefix):
                    yield key, value  # type: ignore[misc]
            return
        refs = node.values[start:stop]
        for batch in range(0, len(refs), 16):  # load siblings concurrently: remote stores are latency-bound
            children = await asyncio.gather(*(self.load(r.hash) for r in refs[batch : batch + 16]))
            for child in children:
                async for item in self._items(child, prefix, end):
                    yield item

    async def diff(self, old: bytes, new: bytes) -> AsyncIterator[tuple[str, FileEntry | None, FileEntry | None]]:
        """Yield (path, old entry, new entry) for every path that differs, in path order.

        Both sides are walked as queues of subtree references and entries; equal subtree hashes at the front of
        both queues are skipped without loading them, which makes the walk proportional to the change.
        """
        qa: deque[tuple[str, str, Any]] = deque([("ref", "", old)])
        qb: deque[tuple[str, str, Any]] = deque([("ref", "", new)])
        levels: dict[bytes, int] = {}

        async def expand(q: deque[tuple[str, str, Any]]) -> None:
            _, _, h = q.popleft()
            node = await self.load(h)
            levels[h] = node.level
            if node.level == 0:
                q.extendleft(reversed([("entry", k, v) for k, v in zip(node.keys, node.values, strict=True)]))
            else:
                refs = [("ref", k, v.hash) for k, v in zip(node.keys, node.values, strict=True)]  # type: ignore[attr-defined]
                for ref in refs:
                    levels[ref[2]] = node.level - 1
                q.extendleft(reversed(refs))

        while qa or qb:
            fa = qa[0] if qa else None
            fb = qb[0] if qb else None
            if fa is not None and fb is not None and fa[0] == "ref" and fb[0] == "ref" and fa[2] == fb[2]:
                qa.popleft(), qb.popleft()
            elif fa is not None and fb is not None and fa[0] == "entry" and fb[0] == "entry":
                if fa[1] == fb[1]:
                    qa.popleft(), qb.popleft()
                    if fa[2] != fb[2]:
                        yield fa[1], fa[2], fb[2]
                elif fa[1] < fb[1]:
                    yield qa.popleft()[1], fa[2], None
                else:
                    yield qb.popleft()[1], None, fb[2]
            elif fa is not None and fa[0] == "entry" and (fb is None or fb[1] > fa[1]):
                yield qa.popleft()[1], fa[2], None  # fb's subtree starts after fa: fa is only on the old side
            elif fb is not None and fb[0] == "entry" and (fa is None or fa[1] > fb[1]):
                yield qb.popleft()[1], None, fb[2]
            elif fa is not None and fb is not None and fa[0] == "ref" and fb[0] == "ref":
                la, lb = levels.get(fa[2]), levels.get(fb[2])
                if la is None or lb is None or la >= lb:
                    await expand(qa)
                if la is None or lb is None or lb >= la:
                    await expand(qb)
            else:
                await expand(qa if fa is not None and fa[0] == "ref" else qb)

    # -- writes ------------------------------------------------------------------------------------------------

    async def apply(
        self, root: bytes, changes: Mapping[str, FileEntry | None]
    ) -> tuple[bytes, dict[bytes, bytes]]:
        """Return (new root hash, {hash: encoded node} of the nodes to write) after applying `changes`.

        `changes` maps a path to its new entry, or None to delete it (deleting a missing path is a no-op).
        """
        out: dict[bytes, bytes] = {}
        ordered = sorted(changes.items())
        node = await self.load(root)
        nodes = await self._apply(node, ordered, out) if ordered else [node]
        if not nodes:
            return EMPTY_ROOT, {}
        while len(nodes) > 1:
            refs = [self._ref(n, out) for n in nodes]
            nodes = [Node(nodes[0].level + 1, tuple(r.first_key for r in part), tuple(part)) for part in _split(refs)]
        top = nodes[0]
        while top.level > 0 and len(top.keys) == 1:  # a root with one child adds height for nothing
            child_hash = top.values[0].hash
            top = await self._load_new(child_hash, out)
        raw = encode_node(top)
        new_root = node_hash(raw)
        out[new_root] = raw
        self._remember(new_root, top)
        return new_root, out

    async def _load_new(self, h: bytes, out: dict[bytes, bytes]) -> Node:
        from mic.formats.btree_node import decode_node

        return decode_node(out[h]) if h in out else await self.load(h)

    def _ref(self, node: Node, out: dict[bytes, bytes]) -> ChildRef:
        raw = encode_node(node)
        h = node_hash(raw)
        out[h] = raw
        self._remember(h, node)
        return ChildRef(node.keys[0], h, _count(node))

    def _remember(self, h: bytes, node: Node) -> None:
        remember = getattr(self.source, "remember", None)  # a cache in the source spares decoding our own nodes
        if remember is not None:
            remember(h, node)

    async def _apply(self, node: Node, changes: list[_Change], out: dict[bytes, bytes]) -> list[Node]:
        if node.level == 0:
            merged: dict[str, FileEntry] = dict(zip(node.keys, node.values, strict=True))  # type: ignore[arg-type]
            for key, entry in changes:
                if entry is None:
                    merged.pop(key, None)
                else:
                    merged[key] = entry
            items = sorted(merged.items())
            if not items:
                return []
            return [Node(0, tuple(k for k, _ in part), tuple(v for _, v in part)) for part in _split(items)]
        groups: dict[int, list[_Change]] = {}
        for key, entry in changes:
            groups.setdefault(max(0, bisect_right(node.keys, key) - 1), []).append((key, entry))
        loaded = await asyncio.gather(*(self.load(node.values[i].hash) for i in groups))
        refs: list[ChildRef] = []
        children = dict(zip(groups, loaded, strict=True))
        for i, ref in enumerate(node.values):
            if i not in groups:
                refs.append(ref)  # type: ignore[arg-type]
                continue
            for new_child in await self._apply(children[i], groups[i], out):
                refs.append(self._ref(new_child, out))
        if not refs:
            return []
        return [Node(node.level, tuple(r.first_key for r in part), tuple(part)) for part in _split(refs)]
