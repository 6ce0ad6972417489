"""A mic workspace: a directory with `.mic/` holding its project, base position, active session and stat cache.

Files in `.mic/`: `state.json` (project, base position and tree, active session, last HLC), `config.toml` (the
store this workspace came from, read by `mic.config` as part of the workspace layer) and `index` (the stat cache,
see `mic.statcache`). State is written with temp + rename, so a killed command leaves the old or the new state.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mic.errors import WorkspaceError
from mic.hlc import Clock
from mic.paths import path_problem, show_path
from mic.statcache import Index

__all__ = ["Workspace", "WorkspaceState"]


@dataclass
class WorkspaceState:
    """What `.mic/state.json` holds."""

    project: str
    base: int
    base_tree: str
    session: str | None = None
    hlc: int = 0


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


class Workspace:
    """An opened workspace. Mutate `state` then call `save()`; the index is loaded on first use."""

    def __init__(self, root: Path, state: WorkspaceState) -> None:
        self.root = root
        self.state = state
        self.clock = Clock(state.hlc)
        self._index: Index | None = None

    @property
    def dot(self) -> Path:
        return self.root / ".mic"

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = Index.load(self.dot / "index")
        return self._index

    @property
    def base_tree(self) -> bytes:
        return bytes.fromhex(self.state.base_tree)

    @classmethod
    def create(
        cls, root: Path, state: WorkspaceState, *, store_url: str, s3_endpoint_url: str | None
    ) -> Workspace:
        """Make `root/.mic` (refusing to nest in or overwrite another workspace)."""
        root = root.resolve()
        if (root / ".mic").exists():
            raise WorkspaceError(f"{root} is already a mic workspace (it has .mic/)")
        root.mkdir(parents=True, exist_ok=True)
        (root / ".mic").mkdir()
        lines = ["[vcs]", f"store_url = {_toml_string(store_url)}"]
        if s3_endpoint_url:
            lines.append(f"s3_endpoint_url = {_toml_string(s3_endpoint_url)}")
        (root / ".mic" / "config.toml").write_text("\n".join(lines) + "\n")
        ws = cls(root, state)
        ws.save()
        return ws

    @classmethod
    def open(cls, root: Path | None) -> Workspace:
        """Open the workspace at `root` (as found by the config loader)."""
        if root is None:
            raise WorkspaceError(
                "not in a mic workspace (no .mic/ here or above): run `mic checkout <project> [dir]` or `mic init`"
            )
        try:
            raw = json.loads((root / ".mic" / "state.json").read_text())
            state = WorkspaceState(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise WorkspaceError(f"{root}/.mic/state.json is unreadable ({exc}); check the workspace out again") from exc
        return cls(root, state)

    def save(self) -> None:
        """Persist state (and the index, if loaded) atomically."""
        self.save_state()
        if self._index is not None:
            self._index.save()

    def save_state(self) -> None:
        """Persist `state.json` alone (the index is a cache: an older one on disk only costs re-hashing)."""
        self.state.hlc = max(self.state.hlc, self.clock.last)
        tmp = self.dot / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        os.replace(tmp, self.dot / "state.json")

    def file(self, rel: str) -> Path:
        """The absolute path of a workspace-relative path, refusing anything that escapes the workspace or that
        mic does not track (`mic.paths`)."""
        problem = path_problem(rel)  # the rule the scan follows too: what it would not see is never written
        if problem is not None:
            raise WorkspaceError(f"refusing path {show_path(rel)}: {problem}")
        return self.root / rel

    def write_file(self, rel: str, data: bytes, mode: int) -> Path:
        """Write one file as the tree says (creating directories; replacing whatever was there)."""
        path = self.file(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            if path.is_dir() and not path.is_symlink():
                raise WorkspaceError(f"cannot write file {rel}: a directory is in the way")
            path.unlink()
        if mode == 2:
            os.symlink(os.fsdecode(data), path)
        else:
            tmp = path.with_name(f".{path.name}.mic-tmp")
            tmp.write_bytes(data)
            os.chmod(tmp, 0o755 if mode == 1 else 0o644)
            os.replace(tmp, path)
        return path

    def remove_file(self, rel: str) -> None:
        """Delete a file and any directories it leaves empty."""
        path = self.file(rel)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
