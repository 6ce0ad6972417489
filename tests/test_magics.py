"""Every binary format's magic is declared once, as its module's `MAGIC`, and no two formats share one.

Two formats with one magic (the stat cache and the disk index snapshot were both `MICI`) make a file of one
parse as a damaged file of the other, instead of being recognised as the wrong kind.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mic", "micd", "mickernel", "protocols")


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if not info.name.endswith("__main__"):  # `python -m` entry points run on import
                names.append(info.name)
    return sorted(names)


def _declared() -> dict[str, bytes]:
    """Module name → the `MAGIC` it defines (a module that imports another's `MAGIC` counts too: don't)."""
    declared = {}
    for name in _module_names():
        magic = vars(importlib.import_module(name)).get("MAGIC")
        if magic is not None:
            declared[name] = magic
    return declared


def test_magics_are_unique():
    declared = _declared()
    owners: dict[bytes, list[str]] = {}
    for module, magic in declared.items():
        owners.setdefault(magic, []).append(module)
    assert {magic: mods for magic, mods in owners.items() if len(mods) > 1} == {}
    assert all(isinstance(magic, bytes) and len(magic) == 4 for magic in declared.values()), declared


def test_the_known_formats_declare_their_magic():
    """The check above is only as good as its coverage: every format written today is found."""
    assert {
        "mic.formats.blob", "mic.formats.btree_node", "mic.formats.chunked", "mic.formats.landing",
        "mic.formats.session", "mic.statcache", "micd.record", "micd.upload_queue", "micd.tiers.disk.index",
        "micd.tiers.disk.journal", "micd.tiers.disk.kvfile", "micd.tiers.disk.usage",
    } <= set(_declared())


def _stray_magics(path: Path) -> list[str]:
    """Magic-looking bytes literals (`b"MIC"` in any case, then a capital: `MICB`, `micJ`; not `micd`) that are
    not the value of a `MAGIC =` assignment."""
    tree = ast.parse(path.read_text(), filename=str(path))
    declared = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["MAGIC"]
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and len(node.value) == 4
        and node.value[:3].lower() == b"mic" and node.value[3:].isupper() and id(node) not in declared
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_magic_outside_a_magic_declaration(package):
    strays = [s for path in sorted((ROOT / package).rglob("*.py")) for s in _stray_magics(path)]
    assert strays == []
