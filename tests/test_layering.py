"""The architecture, enforced: import direction between layers and where the environment may be read.

protocols -> micd core -> micd/tiers; only micd/app.py imports protocols; mic reaches micd only through
micd.client and micd.config (one configuration for both halves; it imports nothing of micd). Both halves share
mickernel (errors, atomic writes, locks, binary codecs, units), which imports none of them. os.environ is read
only in micd/config.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mic", "micd", "mickernel", "protocols")
ENV_READERS = {"micd/config.py"}
# What mic may import from micd: the client, and the configuration both halves share.
MIC_MAY_IMPORT = ("micd.client", "micd.config")
# micd modules that may know about processes, files of the session and the CLI-facing client.
MICD_EDGE = {"micd.app", "micd.lifecycle", "micd.main", "micd.client", "micd.config", "micd.toolconfig"}


@pytest.fixture(autouse=True)
def clean_env() -> None:
    """These tests only parse source files: no environment to isolate, and the shared fixture's private HOME
    per test made them cost ~0.1 s each on this VM (creating directories is slow here)."""


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "_generated" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _violations(module: str, imports: set[str]) -> list[str]:
    top = module.split(".")[0]
    bad = []
    for name in imports:
        if top == "mickernel" and name.split(".")[0] in ("mic", "micd", "protocols"):
            bad.append(f"{module} imports {name}: mickernel sits below both halves and imports neither")
        if top == "micd" and name.startswith("protocols") and module != "micd.app":
            bad.append(f"{module} imports {name}: only micd.app (the composition root) mounts protocols")
        if top == "micd" and (name == "mic" or name.startswith("mic.")):
            bad.append(f"{module} imports {name}: micd must not depend on the mic CLI/VCS")
        if module.startswith("micd.tiers") and any(name == e or name.startswith(e + ".") for e in MICD_EDGE):
            bad.append(f"{module} imports {name}: tiers know nothing of the daemon's edges")
        if top == "protocols" and (name.startswith("micd.tiers") or name.startswith("mic.") or name == "mic"):
            bad.append(f"{module} imports {name}: protocols talk to the micd.store contract only")
        if top == "protocols" and name in MICD_EDGE:
            bad.append(f"{module} imports {name}: protocols must not reach the daemon's edges")
        if module == "micd.config" and name.split(".")[0] == "micd":
            bad.append(f"{module} imports {name}: mic imports the config, so it depends on mickernel only")
        if top == "mic" and name.startswith("micd") and not name.startswith(MIC_MAY_IMPORT):
            bad.append(f"{module} imports {name}: mic reaches micd only through micd.client")
    return bad


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_direction(path: Path) -> None:
    assert _violations(_module_name(path), _imports(path)) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_environment_read_only_in_config(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel in ENV_READERS:
        return
    tree = ast.parse(path.read_text())
    reads = [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ]
    assert reads == [], f"{rel} reads the environment at lines {reads}; only config modules may"


def test_checker_catches_violations() -> None:
    """The checker itself must be able to fail."""
    assert _violations("micd.tiers.disk.store", {"micd.config"})
    assert _violations("micd.store", {"protocols.bazel_http"})
    assert _violations("mic.landing", {"micd.tiers.memory"})
    assert not _violations("micd.app", {"protocols.bazel_http"})
    assert not _violations("mic.commands_daemon", {"micd.client"})
    assert not _violations("mic.cliutil", {"micd.config"})
    assert _violations("mic.cliutil", {"micd.lifecycle"})
    assert _violations("micd.config", {"micd.statedir"})
    assert _violations("micd.config", {"micd.errors"})
    assert not _violations("micd.config", {"mickernel.errors"})
    assert _violations("mic.cliutil", {"micd.errors"})
    assert _violations("mickernel.atomic", {"mic.paths"})
    assert _violations("mickernel.errors", {"micd"})
    assert not _violations("mickernel.binary", {"mickernel.errors"})
