"""Disk tier index: snapshot codec, reopen without per-file stats, and reconciliation after a crash."""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micd.store import Digest, Record
from micd.tiers.disk import DiskTier, index, kvfile
from micd.tiers.disk.lru import Entry
from mickernel.errors import FormatError

KEYS = st.one_of(
    st.tuples(
        st.sampled_from(["sha256", "blake3"]), st.binary(min_size=32, max_size=32), st.integers(0, 2**40)
    ).map(lambda t: (f"{t[0]}/{t[1].hex()}.{t[2]}", t[2])),
    st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**20)).map(
        lambda t: (f"kv/{t[0].hex()}", t[1])
    ),
)


@given(st.lists(st.tuples(KEYS, st.integers(0, 2**63 - 1)), max_size=30))
def test_snapshot_round_trip(items):
    entries = [(key, Entry(size, atime)) for (key, size), atime in items]
    assert index.decode_snapshot(index.encode_snapshot(entries)) == entries


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_snapshot_random_bytes_raise_only_format_error(data):
    try:
        index.decode_snapshot(data)
    except FormatError:
        pass


def resum(body: bytes) -> bytes:
    """Re-checksum a hand-edited snapshot, so the check under test is the one that fires."""
    return body + blake3.blake3(body).digest()


GOOD = index.encode_snapshot([("sha256/" + "ab" * 32 + ".5", Entry(5, 7)), ("kv/" + "cd" * 32, Entry(9, 8))])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "unsupported version"),
        (lambda b: b[:5] + b"\x01" + b[6:], "reserved"),
        (lambda b: b[:-1], "length"),
        (lambda b: b[:8] + b"\x03" + b[9:], "length"),
        (lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], "checksum"),
        (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:], "checksum"),
        (lambda b: b[:10], "truncated"),
        (lambda b: resum(b[:30] + b"\xff" + b[31:-32]), "not ASCII"),
        (lambda b: resum(b[:30] + b"\n" + b[31:-32]), "key count"),
    ],
)
def test_snapshot_damage_is_detected(mutate, message):
    assert len(index.decode_snapshot(GOOD)) == 2
    with pytest.raises(FormatError, match=message):
        index.decode_snapshot(mutate(GOOD))


def test_empty_snapshot_round_trips():
    assert index.decode_snapshot(index.encode_snapshot([])) == []


@given(st.text(max_size=40), st.text(max_size=40), st.binary(max_size=100))
def test_kv_file_round_trip(namespace, key, record):
    assert kvfile.decode_kv_file(kvfile.encode_kv_file(namespace, key, record)) == (namespace, key, record)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_kv_file_random_bytes_raise_only_format_error(data):
    try:
        kvfile.decode_kv_file(data)
    except FormatError:
        pass


async def fill(tier: DiskTier, count: int, seed: int = 0) -> list[Digest]:
    out = []
    for i in range(seed, seed + count):
        data = random.Random(i).randbytes(100 + i)
        out.append(Digest.of(data, "blake3" if i % 2 else "sha256"))
        await tier.put_bytes(out[-1], data)
    return out


def open_tier(root: Path, **kw) -> DiskTier:
    kw.setdefault("soft_cap", 1 << 30)
    kw.setdefault("hard_cap", 2 << 30)
    return DiskTier(root, **kw)


async def test_reopen_keeps_entries_sizes_and_order(tmp_path):
    tier = open_tier(tmp_path)
    await tier.open()
    digests = await fill(tier, 20)
    await tier.put_record("ns/a", "k", Record(b"v", (digests[0],)))
    await tier.get_bytes(digests[0])  # most recently used
    kept = ("used_bytes", "entries", "root_used_bytes")  # claims (journal, headroom) are per instance
    stats = {k: tier.stats()[k] for k in kept}
    order = tier._lru.keys()
    await tier.close()
    again = open_tier(tmp_path)
    await again.open()
    try:
        assert {k: again.stats()[k] for k in kept} == stats
        assert again._lru.keys() == order
        assert await again.find_missing(digests) == []
        assert await again.get_record("ns/a", "k") == Record(b"v", (digests[0],))
    finally:
        await again.close()


async def test_reopen_with_a_valid_snapshot_stats_no_blob_file(tmp_path, monkeypatch):
    tier = open_tier(tmp_path)
    await tier.open()
    await fill(tier, 50)
    await tier.close()
    calls = []
    real = index._stat_entry
    monkeypatch.setattr(index, "_stat_entry", lambda layout, key: calls.append(key) or real(layout, key))
    again = open_tier(tmp_path)
    await again.open()
    await again.close()
    assert calls == []
    # Control: without a snapshot every file is stat'ed once.
    again.layout.snapshot.unlink()
    third = open_tier(tmp_path)
    await third.open()
    await third.close()
    assert len(calls) == 50 and third.entry_count == 50


@pytest.mark.parametrize("damage", ["garbage", "missing", "truncated", "old magic"])
async def test_damaged_snapshot_is_rebuilt_from_the_files(tmp_path, damage):
    """"old magic": a snapshot written before its magic became MICX (it was MICI, the stat cache's too)."""
    tier = open_tier(tmp_path)
    await tier.open()
    digests = await fill(tier, 10)
    used = tier.used_bytes
    await tier.close()
    snap = tier.layout.snapshot
    if damage == "garbage":
        snap.write_bytes(b"not a snapshot at all" * 10)
    elif damage == "missing":
        snap.unlink()
    elif damage == "old magic":
        snap.write_bytes(resum(b"MICI" + snap.read_bytes()[4:-32]))
        with pytest.raises(FormatError, match="bad magic"):
            index.decode_snapshot(snap.read_bytes())
    else:
        snap.write_bytes(snap.read_bytes()[:-7])
    again = open_tier(tmp_path)
    await again.open()
    try:
        assert again.entry_count == 10 and again.used_bytes == used
        assert await again.find_missing(digests) == []
        assert index.read_snapshot(again.layout) is not None  # rewritten right away
    finally:
        await again.close()


async def test_stale_snapshot_never_lies_after_a_crash(tmp_path):
    tier = open_tier(tmp_path)
    await tier.open()
    old = await fill(tier, 6)
    await tier.close()  # snapshot knows the six blobs
    crashed = open_tier(tmp_path)
    await crashed.open()
    new = await fill(crashed, 3, seed=100)
    await crashed.evict(target=crashed.used_bytes - old[0].size - old[1].size)  # evicts old[0], old[1]
    # `crashed` is never closed: its snapshot is not written, as after kill -9.
    again = open_tier(tmp_path)
    await again.open()
    try:
        expected = old[2:] + new
        assert again.entry_count == len(expected)
        assert again.used_bytes == sum(d.size for d in expected)
        assert await again.find_missing(old + new) == old[:2]
    finally:
        await again.close()
        await crashed.close()


async def test_unknown_files_and_directories_are_left_alone(tmp_path):
    tier = open_tier(tmp_path)
    await tier.open()
    queue = tier.layout.base / "s3-queue"
    queue.mkdir()
    (queue / "pending").write_bytes(b"upload me")
    stray = tier.layout.cas / "sha256" / "ab" / "README"
    stray.write_text("not a blob")
    await tier.close()
    again = open_tier(tmp_path)
    await again.open()
    await again.close()
    assert (queue / "pending").read_bytes() == b"upload me"
    assert stray.exists() and again.entry_count == 0


async def test_a_shard_directory_removed_by_hand_is_recreated_on_write(tmp_path):
    tier = open_tier(tmp_path)
    await tier.open()
    data = b"x" * 100
    digest = Digest.of(data)
    tier.layout.blob_path(digest).parent.rmdir()
    await tier.close()
    again = open_tier(tmp_path)
    await again.open()  # the layout marker exists, so this open does not recreate the shard
    try:
        assert await again.find_missing([digest]) == [digest]
        await again.put_bytes(digest, data)
        assert await again.get_bytes(digest) == data
    finally:
        await again.close()
