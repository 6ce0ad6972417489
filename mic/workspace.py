"""A mic workspace: a directory with `.mic/` holding its project, base position, active session and stat cache.

Files in `.mic/`: `state.json` (project, base position and tree, active session, last HLC, unmerged paths), `config.toml` (the
store this workspace came from, read by `micd.config` as part of the workspace layer) and `index` (the stat cache,
see `mic.statcache`). State is written durably with temp + fsync + rename (`mickernel.atomic`), so a killed command
or a power cut leaves the old or the new state, and a base position once saved stays saved.

Two mic commands may run in one workspace at once (an agent's `mic session note` during its `mic land`). Each
read-modify-write of `state.json` and `index` happens under `Workspace.locked()`, an exclusive `flock` on
`.mic/lock` that re-reads both files once held: without it the later writer restores what the earlier one read
(a land's new base undone by a note).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

from mic.errors import WorkspaceError
from mic.hlc import Clock
from mic.paths import TEMP_SUFFIX, path_problem, show_path
from mic.statcache import Index
from mickernel.atomic import create_temp, write_atomic
from mickernel.locks import hold_lock

__all__ = ["Workspace", "WorkspaceState", "discard_temp"]


@dataclass
class WorkspaceState:
    """What `.mic/state.json` holds.

    `unmerged` maps a path to the session whose landed change to it the sync after a `mic land` could not apply,
    because the file had a local edit here (kept as it is; the landed version became its base). Landing the file
    as it is would silently undo that change, so `mic land` refuses while any path is unmerged. A path leaves the
    map through `mic resolve` or when its content equals the landed version again (`clear_merged`). The session
    is "" when no single landing named the path (a directory in the way of a file). Absent from older files (and
    left out of the file when empty, so older versions still read it)."""

    project: str
    base: int
    base_tree: str
    session: str | None = None
    hlc: int = 0
    unmerged: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: object) -> WorkspaceState:
        """Build from parsed JSON, raising ValueError for a missing or unknown field or a value of the wrong type
        (a hand-edited or damaged file must give the "unreadable" error, not a traceback later)."""
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        state = cls(**raw)  # TypeError for a missing required field
        for name, ok in (
            ("project", isinstance(state.project, str) and state.project != ""),
            ("base", _is_int(state.base) and state.base >= 0),
            ("base_tree", isinstance(state.base_tree, str) and len(state.base_tree) == 64
             and all(c in "0123456789abcdef" for c in state.base_tree)),
            ("session", state.session is None or isinstance(state.session, str)),
            ("hlc", _is_int(state.hlc) and state.hlc >= 0),
            ("unmerged", isinstance(state.unmerged, dict)
             and all(isinstance(k, str) and k and isinstance(v, str) for k, v in state.unmerged.items())),
        ):
            if not ok:
                raise ValueError(f"bad value for {name!r}: {getattr(state, name)!r}")
        return state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_state(root: Path) -> WorkspaceState:
    try:
        return WorkspaceState.from_json(json.loads((root / ".mic" / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise WorkspaceError(f"{root}/.mic/state.json is unreadable ({exc}); check the workspace out again") from exc


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


class Workspace:
    """An opened workspace. Mutate `state` then call `save()`; the index is loaded on first use."""

    def __init__(self, root: Path, state: WorkspaceState) -> None:
        self.root = root
        self.state = state
        self.clock = Clock(state.hlc)
        self._index: Index | None = None
        self._locked = False  # inside `locked()`

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
        return cls(root, _read_state(root))

    @contextmanager
    def locked(self) -> Iterator[Workspace]:
        """Hold the workspace lock (exclusive `flock` on `.mic/lock`, waiting for it) for a read-modify-write of
        state and index. On taking it, `state` is re-read and the index dropped (reloaded on next use): another
        command may have changed both while we waited. Re-entrant on one Workspace object.

        The lock file is opened close-on-exec (`mickernel.locks`), so the watcher (a spawned process) never
        inherits it."""
        if self._locked:
            yield self
            return
        with hold_lock(self.dot / "lock", mode=0o644):
            self._locked = True
            try:
                self.state = _read_state(self.root)
                self.clock.observe(self.state.hlc)
                self._index = None
                yield self
            finally:
                self._locked = False

    def save(self) -> None:
        """Persist state (and the index, if loaded) atomically."""
        self.save_state()
        if self._index is not None:
            self._index.save()

    def save_state(self) -> None:
        """Persist `state.json` alone (the index is a cache: an older one on disk only costs re-hashing)."""
        self.state.hlc = max(self.state.hlc, self.clock.last)
        raw = asdict(self.state)
        if not raw["unmerged"]:
            del raw["unmerged"]  # an older mic reads this file as long as nothing is unmerged
        write_atomic(self.dot / "state.json", json.dumps(raw, indent=1), mode=0o644)

    def clear_merged(self, changes: Mapping[str, object]) -> list[str]:
        """Drop from `state.unmerged` every path the scan (`changes`, against the base) no longer reports: its
        content equals the landed version again (the user took theirs). Returns the paths dropped; the caller
        saves the state, under the lock. A deleted file shows as a change: deletion wins only via `mic resolve`."""
        cleared = [p for p in self.state.unmerged if p not in changes]
        for p in cleared:
            del self.state.unmerged[p]
        return sorted(cleared)

    def file(self, rel: str) -> Path:
        """The absolute path of a workspace-relative path, refusing anything that escapes the workspace or that
        mic does not track (`mic.paths`)."""
        problem = path_problem(rel)  # the rule the scan follows too: what it would not see is never written
        if problem is not None:
            raise WorkspaceError(f"refusing path {show_path(rel)}: {problem}")
        return self.root / rel

    def refuse_symlinked_parent(self, rel: str) -> None:
        """Refuse to write or remove below a symlink (one kept as a local edit where the tree now has a
        directory): the write would land wherever the link points, outside the workspace."""
        parent = self.root
        for part in rel.split("/")[:-1]:
            parent = parent / part
            if parent.is_symlink():
                raise WorkspaceError(f"cannot write {show_path(rel)}: {show_path(str(parent.relative_to(self.root)))} is a symlink")

    def write_file(self, rel: str, data: bytes, mode: int) -> Path:
        """Write one file as the tree says (creating directories; replacing whatever was there)."""
        if mode == 2:
            path = self.file(rel)
            self.refuse_symlinked_parent(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._refuse_directory(rel, path)
            path.unlink(missing_ok=True)
            os.symlink(os.fsdecode(data), path)
            return path
        out, tmp = self.temp_file(rel, mode)
        try:
            with out:
                out.write(data)
            return self.install(rel, tmp)
        finally:
            discard_temp(tmp)  # a failed write leaves no temp file (after `install` there is none)

    def temp_file(self, rel: str, mode: int) -> tuple[BinaryIO, Path]:
        """A new empty file next to `rel` (its directories created), open for writing, with `mode`'s permissions,
        that a write fills before `install` moves it over `rel`: a reader never sees a partly written file.

        Created exclusively under an unpredictable name (`create_temp`: O_EXCL, which follows no symlink), with
        its permissions set through its fd: whatever is planted next to `rel` (a symlink out of the workspace) is
        never followed. Its name `.<name>.<random>.mic-tmp` is one the scan skips (`mic.paths`), so one left by
        a killed write is never landed. The caller closes it, and removes it (`discard_temp`) unless installed.
        Not fsynced: a checkout can always be redone from the store, and an fsync per file would bound it at the
        disk's fsync rate."""
        path = self.file(rel)
        self.refuse_symlinked_parent(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(path, mode=0o755 if mode == 1 else 0o644, suffix=TEMP_SUFFIX)
        try:
            return os.fdopen(fd, "wb"), tmp
        except BaseException:
            os.close(fd)
            discard_temp(tmp)
            raise

    def install(self, rel: str, tmp: Path) -> Path:
        """Move the filled and closed `temp_file(rel, mode)` over `rel` (replacing a file or symlink there)."""
        path = self.file(rel)
        self.refuse_symlinked_parent(rel)
        self._refuse_directory(rel, path)
        os.replace(tmp, path)
        return path

    @staticmethod
    def _refuse_directory(rel: str, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            raise WorkspaceError(f"cannot write file {rel}: a directory is in the way")

    def remove_file(self, rel: str) -> None:
        """Delete a file and any directories it leaves empty."""
        path = self.file(rel)
        self.refuse_symlinked_parent(rel)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def discard_temp(tmp: Path) -> None:
    """Remove a `Workspace.temp_file` that was not installed (gone already after `install`). Never raises: it
    runs in `finally` blocks, where an error would replace the one being raised; a leftover is skipped by the
    scan anyway."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
