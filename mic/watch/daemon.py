"""The watcher process: inotify on every directory of one workspace, answering "what changed since token T".

Started detached by `mic.watch.client` as `python -m mic.watch ROOT IDLE_SECONDS`; the protocol and files are
described in `mic.watch`. It exits after IDLE_SECONDS without a request, when the workspace's `.mic` (or the
workspace itself) goes away, on SIGTERM, and at once if another watcher holds the workspace's lock.

Whatever it cannot vouch for it reports as a rescan, never as "unchanged": a new or moved-in directory is
watched first (with everything below it) and then reported as a whole subtree, since files may have been written
in it before its watch existed; a queue overflow is reported as `FULL` (and every directory is watched again); a
directory that cannot be watched (e.g. ENOSPC on `fs.inotify.max_user_watches`) makes every answer `FULL` until
a retry (before each answer) manages to watch everything.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import signal
import socket
import sys
import time

from inotify_simple import INotify, flags

from mic.paths import skipped
from mic.watch import COOKIES, FULL, LOCK, PID, SOCKET
from mickernel.atomic import write_atomic
from mickernel.locks import open_locked

__all__ = ["Watcher", "main"]

_DIR_MASK = (
    flags.CREATE | flags.DELETE | flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVED_FROM
    | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR | flags.DONT_FOLLOW
)
_COOKIE_MASK = flags.CREATE | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR | flags.DONT_FOLLOW
_CREATED = flags.CREATE | flags.MOVED_TO
_REMOVED = flags.DELETE | flags.MOVED_FROM
_MAX_DIRTY = 1_000_000  # remembered paths; past this a new generation starts (clients do one full scan)
_CHECK_EVERY = 5.0  # seconds between checks that `.mic` still exists, when nothing else wakes the loop


def _log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}\n")
    sys.stderr.flush()


class Watcher:
    """The watches, the dirty paths (path → sequence number, oldest first) and the requests awaiting a cookie."""

    def __init__(self, root: str, idle: float) -> None:
        self.root = root
        self.dot = root + "/.mic"
        self.idle = idle
        self.inotify = INotify(nonblocking=True)
        self.gen = os.urandom(8).hex()
        self.seq = 0
        self.dirty: dict[str, int] = {}
        self.dirs: dict[int, str] = {}  # watch descriptor → directory prefix ("" for the root, else "a/b/")
        self.root_wd = -1
        self.cookie_wd = -1
        self.cookies = 0
        self.pending: list[tuple[int, socket.socket, str, int]] = []  # (cookie, connection, gen, seq)
        self.degraded = ""  # why every answer must be FULL, if it must
        self.last_request = time.monotonic()
        self.server: socket.socket | None = None

    def start(self) -> None:
        """Watch the tree and the cookie directory, then listen: clients can connect only once we see everything."""
        cookie_dir = self.dot + "/" + COOKIES
        os.makedirs(cookie_dir, exist_ok=True)
        for name in os.listdir(cookie_dir):  # left by a watcher that was killed
            os.unlink(cookie_dir + "/" + name)
        self.cookie_wd = self.inotify.add_watch(cookie_dir, _COOKIE_MASK)
        self.watch_tree("")
        self.root_wd = next(wd for wd, prefix in self.dirs.items() if prefix == "")
        dot_fd = os.open(self.dot, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.unlink(SOCKET, dir_fd=dot_fd)
            except FileNotFoundError:
                pass
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind(f"/proc/self/fd/{dot_fd}/{SOCKET}")  # no 108-byte limit on the workspace path
        finally:
            os.close(dot_fd)
        self.server.listen(64)
        self.server.setblocking(False)
        _log(f"watching {self.root} ({len(self.dirs)} directories), generation {self.gen}")

    def watch_tree(self, prefix: str) -> None:
        """Watch the directory `prefix` and every directory below it (adding a watch twice is harmless)."""
        stack = [prefix]
        while stack:
            rel = stack.pop()
            path = self.root + "/" + rel[:-1] if rel else self.root
            try:
                wd = self.inotify.add_watch(path, _DIR_MASK)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # gone already: its parent reports that
                    self.degrade(f"cannot watch {path}: {exc}")
                continue
            self.dirs[wd] = rel
            try:
                with os.scandir(path) as it:
                    stack.extend(
                        rel + e.name + "/"
                        for e in it
                        if not skipped(rel, e.name) and e.is_dir(follow_symlinks=False)
                    )
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                self.degrade(f"cannot list {path}: {exc}")

    def degrade(self, why: str) -> None:
        if not self.degraded:
            _log(f"answering 'rescan everything' until every directory is watched: {why}")
        self.degraded = why

    def mark(self, path: str) -> None:
        self.seq += 1
        self.dirty.pop(path, None)
        self.dirty[path] = self.seq
        if len(self.dirty) > _MAX_DIRTY:
            self.gen = os.urandom(8).hex()
            self.dirty.clear()
            _log(f"too many dirty paths: new generation {self.gen}")

    def since(self, gen: str, seq: int) -> list[str]:
        """The paths dirtied after token (gen, seq); [FULL] when that token is not ours or we are degraded."""
        if self.degraded or gen != self.gen:
            return [FULL]
        out = []
        for path, at in reversed(self.dirty.items()):
            if at <= seq:
                break
            out.append(path)
        return out

    def handle(self, events: list) -> bool:
        """Apply a batch of inotify events in order; False when the watcher should exit."""
        for wd, mask, _, name in events:
            if mask & flags.Q_OVERFLOW:
                _log("event queue overflow: reporting a full rescan and watching every directory again")
                self.mark(FULL)
                self.watch_tree("")
                self.answer(self.cookies)  # their cookie events may be lost too
            elif wd == self.cookie_wd:
                if mask & (flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED):
                    _log(".mic/cookies went away")
                    return False
                if name.isdigit():
                    self.answer(int(name))
            elif mask & flags.IGNORED:
                self.dirs.pop(wd, None)
                if wd == self.root_wd:
                    _log("the workspace went away")
                    return False
            elif (prefix := self.dirs.get(wd)) is None or mask & (flags.DELETE_SELF | flags.MOVE_SELF):
                if wd == self.root_wd:
                    _log("the workspace was moved or deleted")
                    return False
            elif mask & flags.ISDIR:
                if skipped(prefix, name):
                    if wd == self.root_wd and name == ".mic" and mask & _REMOVED:
                        _log(".mic went away")
                        return False
                    continue
                path = prefix + name + "/"
                if mask & _CREATED:
                    self.watch_tree(path)  # first watch it: only then can a rescan of it miss nothing
                if mask & (_CREATED | _REMOVED):
                    self.mark(path)
            else:
                self.mark(prefix + name)
        return True

    def accept(self) -> None:
        assert self.server is not None
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        self.last_request = time.monotonic()
        try:
            conn.settimeout(2.0)
            request = b""
            while not request.endswith(b"\n") and len(request) < 200:
                chunk = conn.recv(200)
                if not chunk:
                    break
                request += chunk
            gen, seq = request.decode().split()
            token = (gen, int(seq))
            self.cookies += 1
            fd = os.open(f"{self.dot}/{COOKIES}/{self.cookies}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            _log(f"dropping a request: {exc!r}")
            conn.close()
            return
        self.pending.append((self.cookies, conn, *token))

    def answer(self, cookie: int) -> None:
        """Answer every request whose cookie is `cookie` or older: all events before them have been applied."""
        ready = [p for p in self.pending if p[0] <= cookie]
        self.pending = [p for p in self.pending if p[0] > cookie]
        if ready and self.degraded:
            self.retry()
        for n, conn, gen, seq in ready:
            try:
                conn.sendall(marshal.dumps((self.gen, self.seq, self.since(gen, seq))))
            except OSError:
                pass  # the client gave up; it falls back to a full scan
            finally:
                conn.close()
            try:
                os.unlink(f"{self.dot}/{COOKIES}/{n}")
            except OSError:
                pass

    def retry(self) -> None:
        """Try again to watch every directory; on success, a `FULL` mark covers what went unwatched till now."""
        _log(f"trying again to watch everything (after: {self.degraded})")
        self.degraded = ""
        self.mark(FULL)
        self.watch_tree("")
        if not self.degraded:
            _log("watching everything again")

    def run(self) -> None:
        assert self.server is not None
        while True:
            left = self.idle - (time.monotonic() - self.last_request)
            if left <= 0 and not self.pending:
                _log("idle: exiting")
                return
            ready, _, _ = select.select([self.inotify, self.server], [], [], max(0.0, min(left, _CHECK_EVERY)))
            if not os.path.isdir(self.dot):
                _log(".mic is gone: exiting")
                return
            if self.inotify in ready and not self.handle(list(self.inotify.read(timeout=0))):
                return
            if self.server in ready:
                self.accept()


def main(argv: list[str], ready_fd: int) -> None:
    """`python -m mic.watch ROOT IDLE_SECONDS` (already detached by `mic.watch.__main__`); one byte goes to
    `ready_fd` once clients can connect."""
    root, idle = os.path.realpath(argv[0]), float(argv[1])
    dot = root + "/.mic"
    os.umask(0o077)  # the socket and cookies are this user's alone
    if open_locked(f"{dot}/{LOCK}", blocking=False) is None:  # else held (its fd left open) until we exit
        os.write(ready_fd, b"1")  # another watcher serves this workspace
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    write_atomic(f"{dot}/{PID}", f"{os.getpid()}\n")
    watcher = Watcher(root, idle)
    try:
        watcher.start()
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        watcher.run()
    except Exception as exc:
        _log(f"failed: {exc!r}")
        raise
    finally:
        for name in (SOCKET, PID):  # still holding the lock, so these are ours, not a successor's
            try:
                os.unlink(f"{dot}/{name}")
            except OSError:
                pass
