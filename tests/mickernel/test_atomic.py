"""write_atomic: old file, no file or the whole new one; fsynced before the rename, the directory after it."""

from __future__ import annotations

import os
import stat

import pytest

from mickernel import atomic
from mickernel.atomic import create_temp, write_atomic


def test_writes_text_bytes_and_parts(tmp_path):
    target = tmp_path / "f"
    write_atomic(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_atomic(target, [b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert target.read_bytes() == b"abcdef"
    assert os.listdir(tmp_path) == ["f"]


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "public", "x", mode=0o644)
    finally:
        os.umask(old)
    write_atomic(tmp_path / "private", "x")
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_file_fsynced_before_the_rename_and_directory_after(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old")
    real_fsync = os.fsync
    seen: list[tuple[str, str]] = []

    def recording(fd):
        what = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else os.pread(fd, 100, 0).decode()
        seen.append((what, target.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_atomic(target, "new")
    assert seen == [("new", "old"), ("dir", "new")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old")

    def failing(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_exclusive_creates_once(tmp_path, monkeypatch):
    target = tmp_path / "f"
    synced: list[str] = []
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: synced.append(str(d)))
    write_atomic(target, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(target, "second", exclusive=True)
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["f"]
    assert synced == [str(tmp_path)]


def test_temp_file_in_tmp_dir(tmp_path, monkeypatch):
    """A `tmp_dir` holds the temp file: the target's directory never lists a half-written one."""
    tmp_dir, out = tmp_path / "tmp", tmp_path / "out"
    tmp_dir.mkdir()
    out.mkdir()
    real_replace = os.replace
    moved: list[tuple[str, str]] = []

    def recording(src, dst):
        moved.append((os.path.dirname(src), os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    write_atomic(out / "f", b"x", tmp_dir=tmp_dir)
    assert moved == [(str(tmp_dir), str(out))]
    assert os.listdir(tmp_dir) == [] and os.listdir(out) == ["f"]


def test_create_temp_name_and_mode(tmp_path):
    long = "n" * 250
    fd, path = create_temp(tmp_path / long, mode=0o755, suffix=".mic-tmp")
    os.close(fd)
    assert path.parent == tmp_path
    assert path.name.startswith("." + "n" * 64 + ".") and path.name.endswith(".mic-tmp")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
