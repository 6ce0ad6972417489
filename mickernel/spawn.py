"""Starting a detached background process (the session daemon, the workspace watcher).

Detached: in a session of its own, so a terminal's signals (Ctrl-C in the shell that ran `mic`) never reach
it and it outlives its starter; stdin from /dev/null and its output appended to a log file, so it never
holds the starter's terminal or pipes open (a caller reading `mic`'s output would otherwise wait for EOF
until the daemon exits).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["spawn_detached"]


def spawn_detached(
    argv: list[str], *, log: Path, cwd: str | os.PathLike[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` detached, stdout and stderr appended to `log`, in `cwd` (default: ours)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            close_fds=True,
        )
