"""Codec tests for every binary format: golden files, hypothesis round trips, and fuzzed input raising only
FormatError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mic.bloom import Bloom
from mic.formats.blob import decode_blob, encode_blob
from mic.formats.btree_node import ChildRef, FileEntry, Node, decode_node, encode_node
from mic.formats.chunked import decode_chunked, encode_chunked
from mic.formats.head import Head, decode_head, encode_head
from mic.formats.landing import Landing, decode_landing, encode_landing
from mic.formats.session import Change, Decision, Message, Session, decode_session, encode_session
from mickernel.errors import FormatError

DATA = Path(__file__).resolve().parents[1] / "data"
H = bytes(range(32))

GOLDEN = {
    "head-v0.bin": (encode_head, decode_head, Head(7, H, 123456789)),
    "micc-v1.bin": (encode_chunked, decode_chunked, [H, bytes(32)]),
    "micn-leaf-v1.bin": (
        encode_node, decode_node,
        Node(0, ("a.txt", "dir/b"), (FileEntry(H, 5, 0), FileEntry(bytes(32), 0, 1))),
    ),
    "micn-internal-v1.bin": (
        encode_node, decode_node, Node(1, ("a", "m"), (ChildRef("a", H, 3), ChildRef("m", bytes(32), 9))),
    ),
    "micl-v1.bin": (
        encode_landing, decode_landing,
        Landing(3, 1, H, 99, "s1d2", "fix the parser", ("a", "b/c"), Bloom.of(["a", "b/c"])),
    ),
    "mics-v1.bin": (
        encode_session, decode_session,
        Session(
            "abc123", "make it fast", 2, 1000, "landed", 5,
            (Message("human", 1001, "please"), Message("agent", 1002, "ok")),
            (Decision(1003, "use zstd", "fast", ("gzip", "none")),),
            (Change("added", "a"), Change("deleted", "z")),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_file_decodes_and_reencodes_identically(name):
    encode, decode, obj = GOLDEN[name]
    raw = (DATA / name).read_bytes()
    assert decode(raw) == obj
    assert encode(obj) == raw


def test_golden_micb_decodes():
    assert decode_blob((DATA / "micb-v1.bin").read_bytes()) == b"hello mic\n" * 3


@pytest.mark.parametrize(
    "decode", [decode_blob, decode_chunked, decode_node, decode_head, decode_landing, decode_session]
)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_format_error(decode, data):
    try:
        decode(data)
    except FormatError:
        pass


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_truncation_and_bit_flip_of_golden_raises_format_error_or_decodes(name):
    _, decode, _obj = GOLDEN[name]
    raw = (DATA / name).read_bytes()
    for cut in range(len(raw)):
        with pytest.raises(FormatError):
            decode(raw[:cut])
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x5A
        try:
            decode(bytes(flipped))
        except FormatError:
            pass


def test_format_error_names_expected_and_got():
    with pytest.raises(FormatError) as info:
        decode_node(b"MICX\x01")
    assert info.value.expected == b"MICN" and info.value.got == b"MICX"
    with pytest.raises(FormatError) as info:
        decode_head(b"\x00" * 47)
    assert (info.value.expected, info.value.got) == (48, 47)


def test_blob_size_mismatch_is_detected():
    raw = bytearray(encode_blob(b"x" * 100))
    raw[5] = 99  # claimed size 99, frame holds 100
    with pytest.raises(FormatError):
        decode_blob(bytes(raw))


@given(st.binary(max_size=5000))
def test_blob_round_trip(data):
    assert decode_blob(encode_blob(data)) == data


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=20))
def test_chunked_round_trip(hashes):
    assert decode_chunked(encode_chunked(hashes)) == hashes


@given(st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1))
def test_head_round_trip(pos, tree, hlc):
    assert decode_head(encode_head(Head(pos, tree, hlc))) == Head(pos, tree, hlc)


paths = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@given(st.dictionaries(paths, st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1),
                                        st.sampled_from([0, 1, 2])), max_size=20), st.booleans())
def test_node_round_trip(entries, internal):
    keys = tuple(sorted(entries))
    if internal:
        if not keys:
            return
        node = Node(2, keys, tuple(ChildRef(k, entries[k][0], entries[k][1] or 1) for k in keys))
    else:
        node = Node(0, keys, tuple(FileEntry(*entries[k]) for k in keys))
    assert decode_node(encode_node(node)) == node


@given(st.integers(0, 2**40), st.integers(1, 2**20), st.sets(paths, max_size=30), st.text(max_size=50),
       st.text(max_size=20))
def test_landing_round_trip(base, delta, pathset, goal, sid):
    ps = tuple(sorted(pathset))
    rec = Landing(base + delta, base, H, 5, sid, goal, ps, Bloom.of(ps))
    assert decode_landing(encode_landing(rec)) == rec


@given(
    st.text(max_size=20), st.text(max_size=100),
    st.lists(st.tuples(st.sampled_from(["human", "agent"]), st.integers(0, 2**64 - 1), st.text()), max_size=5),
    st.lists(st.tuples(st.text(), st.text(), st.lists(st.text(), max_size=3)), max_size=4),
    st.dictionaries(paths, st.sampled_from(["added", "modified", "deleted"]), max_size=10),
    st.sampled_from(["active", "landed", "abandoned"]),
)
def test_session_round_trip(sid, goal, msgs, decisions, changes, status):
    s = Session(
        sid, goal, 3, 77, status, 9 if status == "landed" else 0,
        tuple(Message(*m) for m in msgs),
        tuple(Decision(i, w, y, tuple(a)) for i, (w, y, a) in enumerate(decisions)),
        tuple(Change(changes[p], p) for p in sorted(changes)),
    )
    assert decode_session(encode_session(s)) == s


@given(st.sets(paths, max_size=200), paths)
def test_bloom_has_no_false_negatives(members, probe):
    bloom = Bloom.of(members)
    assert all(bloom.may_contain(p) for p in members)
    if probe in members:
        assert bloom.may_contain(probe)


def test_blob_frame_claiming_far_more_than_the_header_is_refused_before_allocating():
    """zstd allocates the frame's declared content size whatever max_output_size says: the header must win."""
    import struct
    import tracemalloc

    import zstandard

    # a valid frame header declaring 64 GiB, then one raw 3-byte last block; the MICB header says 3 bytes
    frame = bytes([0x28, 0xB5, 0x2F, 0xFD, 0xC0, 0x58]) + struct.pack("<Q", 2**36) + bytes([0x19, 0, 0]) + b"abc"
    with pytest.raises(FormatError):
        decode_blob(struct.pack("<4sBI", b"MICB", 1, 3) + frame)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (128 << 20))  # ~4 KiB declaring 128 MiB
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20))
    tracemalloc.start()
    try:
        for body in (bomb, unsized):
            with pytest.raises(FormatError):
                decode_blob(struct.pack("<4sBI", b"MICB", 1, 10) + body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (4 << 20), f"allocated {peak >> 20} MiB for blobs whose header says 10 bytes"


def test_blob_over_the_chunk_size_is_refused_both_ways():
    """A header and frame that agree on a huge size would still make the reader allocate it: MICB is a chunk,
    so nothing over 4 MiB is decoded (or written)."""
    import struct

    import zstandard

    from mic.formats.blob import MAX_SIZE
    from mic.formats.chunked import CHUNK_SIZE

    assert MAX_SIZE == CHUNK_SIZE == 4 << 20
    decode_blob(encode_blob(b"\0" * MAX_SIZE))
    body = zstandard.ZstdCompressor().compress(b"\0" * (MAX_SIZE + 1))
    with pytest.raises(FormatError, match="4 MiB"):
        decode_blob(struct.pack("<4sBI", b"MICB", 1, MAX_SIZE + 1) + body)
    with pytest.raises(ValueError, match="at most"):
        encode_blob(b"\0" * (MAX_SIZE + 1))


def test_blob_whose_frame_does_not_declare_its_size_still_decodes():
    import os
    import struct

    import zstandard

    data = os.urandom(3000) * 700  # 2.1 MB: several pieces of the bounded read
    body = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert decode_blob(struct.pack("<4sBI", b"MICB", 1, len(data)) + body) == data
    with pytest.raises(FormatError):
        decode_blob(struct.pack("<4sBI", b"MICB", 1, len(data) - 1) + body)
