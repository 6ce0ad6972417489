"""The persistent B+ tree against a dict model: lookups, ordered iteration, O(log n) rewrites, cheap diffs."""

from __future__ import annotations

import random

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mic.formats.btree_node import FileEntry, decode_node
from mic.tree import EMPTY_ROOT, FANOUT, Tree, node_hash
from mickernel.errors import IntegrityError, NotFound


class MemoryNodes:
    """A NodeSource over a dict that counts loads (to check that diffs are proportional to the change)."""

    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}
        self.loads = 0

    async def load(self, h: bytes):
        self.loads += 1
        if h not in self.raw:
            raise NotFound(h.hex())
        raw = self.raw[h]
        if node_hash(raw) != h:
            raise IntegrityError(h.hex(), node_hash(raw).hex(), what="tree node")
        return decode_node(raw)


def entry(text: str) -> FileEntry:
    return FileEntry(blake3.blake3(text.encode()).digest(), len(text), 0)


async def build(tree: Tree, nodes: MemoryNodes, root: bytes, changes):
    new_root, written = await tree.apply(root, changes)
    nodes.raw.update(written)
    return new_root, written


async def all_items(tree, root, prefix=""):
    return [item async for item in tree.items(root, prefix)]


async def test_empty_tree():
    tree = Tree(MemoryNodes())
    assert await all_items(tree, EMPTY_ROOT) == []
    assert await tree.lookup(EMPTY_ROOT, "a") is None


async def test_random_operations_match_a_dict_model():
    rng = random.Random(4)
    nodes = MemoryNodes()
    tree = Tree(nodes)
    model: dict[str, FileEntry] = {}
    root = EMPTY_ROOT
    for round_ in range(30):
        changes = {}
        for _ in range(rng.choice([1, 5, 200])):
            path = f"d{rng.randrange(20)}/f{rng.randrange(400)}.txt"
            changes[path] = None if rng.random() < 0.3 else entry(f"{path}{round_}")
        root, _ = await build(tree, nodes, root, changes)
        for path, e in changes.items():
            if e is None:
                model.pop(path, None)
            else:
                model[path] = e
        assert await all_items(tree, root) == sorted(model.items())
    for path in rng.sample(sorted(model), 20):
        assert await tree.lookup(root, path) == model[path]
    assert await tree.lookup(root, "zzz") is None
    assert await all_items(tree, root, "d1/") == sorted((k, v) for k, v in model.items() if k.startswith("d1/"))


async def test_one_change_rewrites_only_the_path_to_the_root():
    nodes = MemoryNodes()
    tree = Tree(nodes)
    root, _ = await build(tree, nodes, EMPTY_ROOT, {f"src/file{i:06d}.py": entry(str(i)) for i in range(50_000)})
    depth = 1
    node = await tree.load(root)
    while node.level > 0:
        node = await tree.load(node.values[0].hash)
        depth += 1
    assert depth <= 4
    _, written = await build(tree, nodes, root, {"src/file012345.py": entry("changed")})
    assert len(written) == depth
    _, written = await build(tree, nodes, root, {"src/file012345.py": None})
    assert len(written) <= depth


async def test_diff_is_exact_and_proportional_to_the_change():
    nodes = MemoryNodes()
    tree = Tree(nodes)
    base, _ = await build(tree, nodes, EMPTY_ROOT, {f"p/{i:06d}": entry(str(i)) for i in range(20_000)})
    changes = {"p/000010": entry("x"), "p/015000": None, "p/015000a": entry("new"), "a-first": entry("y")}
    new, _ = await build(tree, nodes, base, changes)
    nodes.loads = 0
    diff = [d async for d in tree.diff(base, new)]
    assert [d[0] for d in diff] == sorted(changes)
    assert diff[0] == ("a-first", None, entry("y"))
    assert ("p/015000", entry("15000"), None) in diff
    assert nodes.loads < 40  # 20k paths live in ~300 leaves; a 4-path diff touches a handful of root-to-leaf paths
    reverse = [d async for d in tree.diff(new, base)]
    assert [(p, b, a) for p, a, b in reverse] == diff
    assert [d async for d in tree.diff(new, new)] == []


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.text("abc/", min_size=1, max_size=6), st.text("xy", max_size=3), max_size=150),
    st.dictionaries(st.text("abc/", min_size=1, max_size=6), st.one_of(st.none(), st.text("xy", max_size=3)),
                    max_size=150),
)
async def test_diff_matches_model(start, changes):
    nodes = MemoryNodes()
    tree = Tree(nodes)
    a, _ = await build(tree, nodes, EMPTY_ROOT, {k: entry(v) for k, v in start.items()})
    b, _ = await build(tree, nodes, a, {k: (None if v is None else entry(v)) for k, v in changes.items()})
    model_a = {k: entry(v) for k, v in start.items()}
    model_b = dict(model_a)
    for k, v in changes.items():
        if v is None:
            model_b.pop(k, None)
        else:
            model_b[k] = entry(v)
    expected = [(k, model_a.get(k), model_b.get(k)) for k in sorted(set(model_a) | set(model_b))
                if model_a.get(k) != model_b.get(k)]
    assert [d async for d in tree.diff(a, b)] == expected
    assert await all_items(tree, b) == sorted(model_b.items())


async def test_deleting_everything_gives_the_empty_root():
    nodes = MemoryNodes()
    tree = Tree(nodes)
    paths = {f"f{i}": entry(str(i)) for i in range(FANOUT * 3)}
    root, _ = await build(tree, nodes, EMPTY_ROOT, paths)
    root, _ = await build(tree, nodes, root, dict.fromkeys(paths))
    assert root == EMPTY_ROOT


async def test_corrupted_node_is_detected():
    nodes = MemoryNodes()
    tree = Tree(nodes)
    root, _ = await build(tree, nodes, EMPTY_ROOT, {f"f{i}": entry(str(i)) for i in range(FANOUT * 3)})
    child = (await tree.load(root)).values[1].hash
    raw = bytearray(nodes.raw[child])
    raw[-1] ^= 1
    nodes.raw[child] = bytes(raw)
    with pytest.raises(IntegrityError):
        await all_items(tree, root)
