"""spawn_detached: a session of its own, stdin from /dev/null, stdout and stderr appended to the log."""

from __future__ import annotations

import os
import sys

from mickernel.spawn import spawn_detached

REPORT = """
import os, sys
print("sid", os.getsid(0) == os.getpid(), "cwd", os.getcwd(), "stdin", repr(sys.stdin.read()))
print("to stderr", file=sys.stderr)
"""


def test_detached_with_output_in_the_log(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("earlier\n")
    child = spawn_detached([sys.executable, "-c", REPORT], log=log, cwd="/")
    assert child.wait(timeout=30) == 0
    assert log.read_text().splitlines() == ["earlier", "sid True cwd / stdin ''", "to stderr"]


def test_default_working_directory_is_ours(tmp_path):
    log = tmp_path / "log"
    child = spawn_detached([sys.executable, "-c", "import os; print(os.getcwd())"], log=log)
    assert child.wait(timeout=30) == 0
    assert log.read_text().strip() == os.getcwd()
