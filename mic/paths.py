"""Which paths mic tracks: one rule shared by the workspace scan, the watcher, checkout, `mic import git` and land.

- `.mic` at the workspace root is the workspace's own state, never content. A `.mic` deeper down (say
  `tools/.mic/settings.toml`) is an ordinary directory: the scan must see whatever checkout writes, or the file
  would show as deleted and the next land would remove it from history.
- No tracked path has a `.git` component, at any depth. A `.git` directory below the root is a nested repository
  (a `.git` file is a worktree or submodule link): the scan skips it, and checkout, import and land refuse such
  a path, as git itself does.
- No tracked path has a component of the form `.<name>.<random>.mic-tmp`: mic's own temp file, filled next to a
  file before it is moved over it (`Workspace.temp_file`). A write killed midway (SIGKILL during a download) leaves
  one behind: the scan skips it, so it is never shown as added nor landed, and checkout, import and land refuse
  such a path, so no other session can plant one (say, a symlink) where a write would create its temp file.
- A path is clean (relative, no empty, `.` or `..` part) and valid UTF-8, the encoding trees and landing records
  store. A Linux file name may be any bytes; such a name is refused with an error naming it.

No heavy imports: `mic status` loads this module.
"""

from __future__ import annotations

import os

__all__ = ["TEMP_SUFFIX", "check_path", "is_temp_name", "path_problem", "show_path", "skipped", "skipped_names"]

TEMP_SUFFIX = ".mic-tmp"

_SKIP_AT_ROOT = frozenset({".mic", ".git"})
_SKIP_BELOW = frozenset({".git"})


def is_temp_name(name: str) -> bool:
    """Whether the file name `name` is one of mic's temp files: a dot, something, then `TEMP_SUFFIX`."""
    return name.endswith(TEMP_SUFFIX) and name.startswith(".") and len(name) > len(TEMP_SUFFIX) + 1


def skipped_names(prefix: str) -> frozenset[str]:
    """The fixed entry names the scan skips in the directory `prefix` ("" for the root, else "a/b/"); `skipped`
    adds mic's temp files. The scan's inner loop tests this set first, a call per entry costing it ~15%."""
    return _SKIP_BELOW if prefix else _SKIP_AT_ROOT


def skipped(prefix: str, name: str) -> bool:
    """Whether the scan skips the entry `name` in the directory `prefix` ("" for the root, else "a/b/")."""
    return name in skipped_names(prefix) or is_temp_name(name)


def show_path(path: str) -> str:
    """`path` quoted for a message; a name that is not UTF-8 (surrogate escapes from `os.scandir`) as bytes."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return repr(os.fsencode(path))  # b'caf\xe9.txt'
    return repr(path)


def path_problem(path: str) -> str | None:
    """Why mic cannot track `path` (a workspace-relative path with "/" separators), or None if it can."""
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "it is not a clean relative path"
    if parts[0] == ".mic":
        return "it is inside the workspace's own .mic directory"
    if ".git" in parts:
        return "it has a .git component (a nested git repository, which mic, like git, does not track)"
    if any(is_temp_name(part) for part in parts):
        return f"a name of the form .<name>.<random>{TEMP_SUFFIX} is a temp file of mic's own; rename it"
    try:
        path.encode()
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 (mic stores paths as UTF-8); rename it"
    return None


def check_path(path: str) -> None:
    """Raise BadRequest naming `path` if mic cannot track it."""
    problem = path_problem(path)
    if problem is not None:
        from mickernel.errors import BadRequest

        raise BadRequest(f"cannot track {show_path(path)}: {problem}")
