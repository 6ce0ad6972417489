"""Which paths mic tracks: one rule shared by the workspace scan, the watcher, checkout, `mic import git` and land.

- `.mic` at the workspace root is the workspace's own state, never content. A `.mic` deeper down (say
  `tools/.mic/settings.toml`) is an ordinary directory: the scan must see whatever checkout writes, or the file
  would show as deleted and the next land would remove it from history.
- No tracked path has a `.git` component, at any depth. A `.git` directory below the root is a nested repository
  (a `.git` file is a worktree or submodule link): the scan skips it, and checkout, import and land refuse such
  a path, as git itself does.
- A path is clean (relative, no empty, `.` or `..` part) and valid UTF-8, the encoding trees and landing records
  store. A Linux file name may be any bytes; such a name is refused with an error naming it.

No heavy imports: `mic status` loads this module.
"""

from __future__ import annotations

import os

__all__ = ["check_path", "path_problem", "show_path", "skipped_names"]

_SKIP_AT_ROOT = frozenset({".mic", ".git"})
_SKIP_BELOW = frozenset({".git"})


def skipped_names(prefix: str) -> frozenset[str]:
    """The entry names the scan skips in the directory `prefix` ("" for the root, else "a/b/")."""
    return _SKIP_BELOW if prefix else _SKIP_AT_ROOT


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
    try:
        path.encode()
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 (mic stores paths as UTF-8); rename it"
    return None


def check_path(path: str) -> None:
    """Raise BadRequest naming `path` if mic cannot track it."""
    problem = path_problem(path)
    if problem is not None:
        from mic.errors import BadRequest

        raise BadRequest(f"cannot track {show_path(path)}: {problem}")
