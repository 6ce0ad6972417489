"""`python -m mic.watch ROOT IDLE_SECONDS`: fork; the child watches, this process exits once the child listens.

The starter waits for this first process alone: exit status 0 means the watcher listens (or another one already
serves the workspace), 1 that it failed (see `.mic/watch.log`). The child is adopted by init, so no `mic` process
(or test runner) is left with a zombie to reap.
"""

import os
import sys

ready_r, ready_w = os.pipe()
if os.fork() != 0:
    os.close(ready_w)
    os._exit(0 if os.read(ready_r, 1) else 1)  # the child writes one byte when ready; an exit closes the pipe
os.close(ready_r)

from mic.watch.daemon import main  # noqa: E402 (after the fork: the parent exits as soon as it can)

main(sys.argv[1:], ready_fd=ready_w)
