"""HLC monotonicity under clock skew, and the stat cache: unchanged files are never re-hashed."""

from __future__ import annotations

import os
import time

from mic.hlc import Clock, format_hlc, pack, unpack
from mic.statcache import RACY_NS, Index, hash_path, scan


def test_hlc_is_monotonic_when_the_wall_clock_goes_back():
    wall = [1000]
    clock = Clock(wall_ms=lambda: wall[0])
    a = clock.tick()
    wall[0] = 500  # skew: the clock jumps back
    b = clock.tick()
    assert b > a and unpack(b) == (1000, 1)
    clock.observe(pack(5000, 7))  # a remote landing far ahead
    c = clock.tick()
    assert c > pack(5000, 7)
    wall[0] = 6000
    assert unpack(clock.tick()) == (6000, 0)
    assert format_hlc(pack(0, 3)) == "1970-01-01 00:00:00.000Z+3"


def test_hlc_logical_overflow_borrows_a_millisecond():
    clock = Clock(pack(10, 0xFFFF), wall_ms=lambda: 10)
    assert unpack(clock.tick()) == (11, 0)


def _age(path, seconds=5):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_scan_rehashes_only_changed_files(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").write_text(f"content {i}")
        _age(tmp_path / f"f{i}")
    (tmp_path / ".mic").mkdir()
    (tmp_path / ".mic" / "ignored").write_text("x")
    index = Index(tmp_path / ".mic" / "index")
    first = scan(tmp_path, index)
    assert first.rehashed == 50 and set(first.changes) == {f"f{i}" for i in range(50)}
    for rel, e in list(index.entries.items()):  # make every file part of the base
        index.entries[rel] = (*e[:5], e[3], e[4], e[0], *e[8:])
    index.save()
    index = Index.load(tmp_path / ".mic" / "index")
    second = scan(tmp_path, index)
    assert second.rehashed == 0 and second.changes == {}
    (tmp_path / "f3").write_text("content X")  # same size, new content
    _age(tmp_path / "f3", 2)
    (tmp_path / "f4").unlink()
    os.chmod(tmp_path / "f5", 0o755)
    third = scan(tmp_path, index)
    assert {p: c[0] for p, c in third.changes.items()} == {"f3": "modified", "f4": "deleted", "f5": "modified"}
    assert third.rehashed == 2  # f3 and f5 (mode change); f4 needs no hashing


def test_recently_modified_file_is_not_trusted(tmp_path):
    (tmp_path / "f").write_text("a")
    (tmp_path / ".mic").mkdir()
    index = Index(tmp_path / ".mic" / "index")
    assert scan(tmp_path, index).rehashed == 1
    index.save()
    assert index.entries["f"][1] == -1  # modified within RACY_NS of the save: smudged, re-hashed next time
    assert scan(tmp_path, index).rehashed == 1
    _age(tmp_path / "f")
    scan(tmp_path, index)
    index.save()
    assert scan(tmp_path, index).rehashed == 0
    assert RACY_NS <= 1_000_000_000


def test_damaged_index_only_costs_rehashing(tmp_path):
    (tmp_path / "index").write_bytes(b"\x00garbage")
    assert Index.load(tmp_path / "index").entries == {}


def _tracked_tree(tmp_path, n=40):
    (tmp_path / ".mic").mkdir()
    for i in range(n):
        (tmp_path / f"d{i % 4}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 4}" / f"f{i}").write_text(f"content {i}")
        _age(tmp_path / f"d{i % 4}" / f"f{i}")
    index = Index(tmp_path / ".mic" / "index")
    scan(tmp_path, index)
    for rel, e in list(index.entries.items()):  # make every file part of the base
        index.entries[rel] = (*e[:5], e[3], e[4], e[0], *e[8:])
    index.save()
    return Index.load(tmp_path / ".mic" / "index")


def test_small_saves_write_a_delta_that_round_trips(tmp_path):
    index = _tracked_tree(tmp_path)
    full = (tmp_path / ".mic" / "index").stat().st_size
    (tmp_path / "d1" / "f1").write_text("changed")
    _age(tmp_path / "d1" / "f1", 2)
    (tmp_path / "d2" / "new").write_text("new file")
    _age(tmp_path / "d2" / "new", 2)
    (tmp_path / "d3" / "f3").unlink()
    first = scan(tmp_path, index)
    assert {p: c[0] for p, c in first.changes.items()} == {"d1/f1": "modified", "d2/new": "added", "d3/f3": "deleted"}
    index.entries.pop("d3/f3")  # as a landing of the deletion does
    index.save()
    assert index._delta == {"d1/f1", "d2/new", "d3/f3"}  # the blobs were reused as they were
    reloaded = Index.load(tmp_path / ".mic" / "index")
    assert reloaded.entries == index.entries and "d3/f3" not in reloaded.entries
    again = scan(tmp_path, Index.load(tmp_path / ".mic" / "index"))
    assert again.rehashed == 0 and {p: c[0] for p, c in again.changes.items()} == {"d1/f1": "modified", "d2/new": "added"}
    assert (tmp_path / ".mic" / "index").stat().st_size > full - 200  # same blobs plus a small delta


def test_entries_written_directly_are_seen_by_the_next_scan(tmp_path):
    index = _tracked_tree(tmp_path)
    assert scan(tmp_path, index).changes == {}
    e = index.entries["d0/f0"]
    index.entries["d0/f0"] = (*e[:5], b"\x01" * 32, e[6], e[7], *e[8:])  # the base moved on (as after a landing)
    changed = scan(tmp_path, index)
    assert changed.rehashed == 0 and list(changed.changes) == ["d0/f0"]
    index.save()
    assert list(scan(tmp_path, Index.load(tmp_path / ".mic" / "index")).changes) == ["d0/f0"]


def test_many_changes_make_a_full_save(tmp_path):
    index = _tracked_tree(tmp_path, n=1200)
    for i in range(0, 1200, 1):
        (tmp_path / f"d{i % 4}" / f"f{i}").write_text(f"new {i}")
        _age(tmp_path / f"d{i % 4}" / f"f{i}", 2)
    assert len(scan(tmp_path, index).changes) == 1200
    index.save()
    assert index._delta == set()  # re-encoded: the delta would have been larger than the threshold
    assert len(scan(tmp_path, Index.load(tmp_path / ".mic" / "index")).changes) == 1200


def test_damaged_entries_blob_only_costs_rehashing(tmp_path):
    _tracked_tree(tmp_path, n=8)
    path = tmp_path / ".mic" / "index"
    raw = path.read_bytes()
    path.write_bytes(raw[:-64] + b"\x00" * 64)  # the entries are the file's last part; the stat keys stay intact
    (tmp_path / "d0" / "f0").write_text("changed")
    result = scan(tmp_path, Index.load(path))
    assert result.rehashed == 8 and {c[0] for c in result.changes.values()} == {"added"}


def test_racy_rule_holds_when_a_scan_runs_between_change_and_save(tmp_path):
    index = _tracked_tree(tmp_path)
    (tmp_path / "d0" / "f0").write_text("fresh")  # written just now: within RACY_NS of the save below
    scan(tmp_path, index)
    scan(tmp_path, index)  # folds the first scan's writes into the delta before the save
    index.save()
    assert Index.load(tmp_path / ".mic" / "index").entries["d0/f0"][1] == -1


def _scan_kinds(tmp_path):
    result = scan(tmp_path, Index.load(tmp_path / ".mic" / "index"))
    return result.rehashed, {p: c[0] for p, c in result.changes.items()}


def _change_some(tmp_path):
    for d in ("d0", "d1", "d2", "d3"):  # one change of each kind on both sides of the split
        (tmp_path / d / "extra").write_text("new")
    (tmp_path / "d0" / "f0").write_text("changed 0")
    (tmp_path / "d1" / "f1").write_text("changed 1")
    (tmp_path / "d2" / "f2").unlink()
    (tmp_path / "d3" / "f3").unlink()


def test_forked_walk_finds_what_the_single_walk_finds(tmp_path, monkeypatch):
    import mic.statcache as statcache

    _tracked_tree(tmp_path)
    _change_some(tmp_path)
    monkeypatch.setattr(statcache, "_FORK_MIN", 10**9)
    single = _scan_kinds(tmp_path)
    monkeypatch.setattr(statcache, "_FORK_MIN", 0)
    forked = _scan_kinds(tmp_path)
    assert forked == single and single[0] == 6 and len(single[1]) == 8


def test_forked_walk_falls_back_when_the_child_fails(tmp_path, monkeypatch):
    import marshal
    import types

    import mic.statcache as statcache

    _tracked_tree(tmp_path)
    _change_some(tmp_path)
    expected = _scan_kinds(tmp_path)

    def broken_dumps(value, *args):
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list):
            raise RuntimeError("child cannot report")  # only the child's report has this shape
        return marshal.dumps(value, *args)

    monkeypatch.setattr(statcache, "_FORK_MIN", 0)
    monkeypatch.setattr(statcache, "marshal", types.SimpleNamespace(dumps=broken_dumps, loads=marshal.loads))
    assert _scan_kinds(tmp_path) == expected


def test_same_tick_rewrite_after_a_scan_is_seen_even_when_the_index_is_saved_late(tmp_path):
    """The racy window starts at the scan, not at the save: a same-size rewrite in the same clock tick right
    after the hash must not hide behind an unchanged stat key, however long `mic land` takes to save."""
    (tmp_path / ".mic").mkdir()
    f = tmp_path / "f"
    f.write_text("first")
    before = f.stat()
    index = Index(tmp_path / ".mic" / "index")
    assert scan(tmp_path, index).changes["f"][0] == "added"
    f.write_text("other")  # same size; then the same mtime, as a write within the same tick leaves it
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(RACY_NS / 1e9 + 0.05)  # the save comes later than the racy window after the change
    index.save()
    index = Index.load(tmp_path / ".mic" / "index")
    result = scan(tmp_path, index)
    assert result.rehashed == 1
    assert result.changes["f"][1] == hash_path(f, 0)  # the new content's hash, not the first one's


def test_a_rewrite_that_restores_size_and_mtime_is_seen(tmp_path):
    """cp -p, rsync -t --inplace, tar x and touch -r restore mtime; ctime in the stat key still tells (as in git)."""
    import shutil

    import blake3

    (tmp_path / ".mic").mkdir()
    f = tmp_path / "config.txt"
    f.write_text("port = 8080\n")
    _age(f, 10)
    index = Index(tmp_path / ".mic" / "index")
    assert scan(tmp_path, index).changes["config.txt"][0] == "added"
    index.save()
    time.sleep(0.05)  # a later clock tick for the ctime of the rewrite
    src = tmp_path / "other.txt"
    src.write_text("port = 9090\n")
    os.utime(src, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))
    ino = f.stat().st_ino
    shutil.copy2(src, f)  # what `cp -p` does: same inode, same size, content rewritten, mtime restored
    src.unlink()
    assert f.stat().st_ino == ino and f.stat().st_mtime_ns == index.entries["config.txt"][1]
    result = scan(tmp_path, Index.load(tmp_path / ".mic" / "index"))
    assert result.changes["config.txt"][1] == blake3.blake3(b"port = 9090\n").digest()
