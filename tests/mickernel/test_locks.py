"""flock helpers: exclusive and shared, waiting or not, for a with-block, an fd kept open, or an open file."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from mickernel.locks import hold_lock, locked_fd, open_locked


def test_hold_lock_excludes_others_until_the_block_ends(tmp_path):
    path = tmp_path / "lock"
    with hold_lock(path) as acquired:
        assert acquired
        with hold_lock(path, blocking=False) as second:
            assert not second
    with hold_lock(path, blocking=False) as again:
        assert again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_blocking_waits_for_the_holder(tmp_path):
    path = tmp_path / "lock"
    order: list[str] = []
    held = threading.Event()

    def holder():
        with hold_lock(path):
            held.set()
            threading.Event().wait(0.2)
            order.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    with hold_lock(path):
        order.append("acquired")
    thread.join()
    assert order == ["released", "acquired"]


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):
    path = tmp_path / "lock"
    first = open_locked(path, shared=True)
    second = open_locked(path, shared=True, blocking=False)
    assert first is not None and second is not None
    assert open_locked(path, blocking=False) is None
    os.close(first)
    os.close(second)
    exclusive = open_locked(path, blocking=False)
    assert exclusive is not None
    assert open_locked(path, shared=True, blocking=False) is None
    os.close(exclusive)


def test_open_locked_keeps_the_lock_until_the_fd_closes(tmp_path):
    path = tmp_path / "lock"
    fd = open_locked(path, mode=0o644)
    assert fd is not None and not os.get_inheritable(fd)  # a spawned process never inherits the lock
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert open_locked(path, blocking=False) is None
    os.close(fd)
    fd = open_locked(path, blocking=False)
    assert fd is not None
    os.close(fd)


def test_open_locked_without_create_refuses_an_absent_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_locked(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_locked_fd_unlocks_but_keeps_the_file_open(tmp_path):
    path = tmp_path / "ledger"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with locked_fd(fd):
            assert open_locked(path, blocking=False) is None
        other = open_locked(path, blocking=False)
        assert other is not None
        os.close(other)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
