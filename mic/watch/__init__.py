"""The workspace file watcher: a per-workspace process that tells `mic status` which paths changed (Linux inotify).

Like git's fsmonitor, it lets a status on a large tree stat only what changed instead of walking everything.
`mic.watch.daemon` is the watcher (`python -m mic.watch ROOT`); `mic.watch.client` starts it and asks it.

Files in `.mic/`: `watch.sock` (the unix socket), `watch.lock` (held by the live watcher: one per workspace),
`watch.pid`, `watch.log` (its stderr) and `cookies/` (see below).

Protocol, one request per connection: the client sends `GEN SEQ\\n` (the token its stat cache is valid for, or
`- 0` for none) and reads a `marshal`led `(gen, seq, paths)` until EOF. `(gen, seq)` is the new token: `gen` is
random per watcher start, `seq` counts the paths the watcher marked dirty. `paths` are the workspace-relative
paths dirtied after the client's token: a file path, a directory prefix ending in `/` ("rescan this subtree"), or
`""` ("rescan everything": unknown generation, event queue overflow, a directory that could not be watched).
Before answering, the watcher creates a cookie file `.mic/cookies/N` and answers only once it has read that file's
own creation event: every change made before the request was queued before the cookie, so it is in the answer.

Settings (`micd.config`): `vcs.watch` ("off" disables it), `vcs.watch_min_files` (smaller workspaces get no
watcher: a full scan is cheap there), `vcs.watch_idle_timeout`. Limits, shared with git's fsmonitor: inotify does
not report writes through a shared `mmap`, nor writes to a hard-linked file made through a path outside the
workspace; where those matter, `vcs.watch = "off"` gives the stat scan alone.
"""

from __future__ import annotations

__all__ = ["COOKIES", "FULL", "LOCK", "LOG", "PID", "SOCKET"]

SOCKET = "watch.sock"
LOCK = "watch.lock"
PID = "watch.pid"
LOG = "watch.log"
COOKIES = "cookies"
FULL = ""  # the prefix of every path: "rescan everything"
