"""KV record codec: hypothesis round trip, random bytes raise only FormatError, each damage named."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micd import record as record_module
from micd.record import MAGIC, VERSION, decode_record, encode_record
from micd.store import Digest, Record
from mickernel.errors import BadRequest, FormatError

DIGESTS = st.builds(
    Digest,
    st.sampled_from(["sha256", "blake3"]),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.integers(0, 2**64 - 1),
)
RECORDS = st.builds(
    Record,
    st.binary(max_size=2000),
    st.lists(DIGESTS, max_size=20).map(tuple),
    st.lists(st.tuples(st.text(max_size=30), st.text(max_size=100)), max_size=8).map(tuple),
)


@given(RECORDS)
def test_round_trip(record):
    assert decode_record(encode_record(record)) == record


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_format_error(data):
    try:
        decode_record(data)
    except FormatError:
        pass


@settings(max_examples=300)
@given(RECORDS, st.data())
def test_mutated_records_raise_only_format_error(record, data):
    encoded = bytearray(encode_record(record))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            decode_record(candidate)
        except FormatError:
            pass


def good() -> bytes:
    return encode_record(Record(b"val", (Digest.of(b"x"),), (("k", "v"),)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"MICR\x01\x00", "truncated"),
        (b"XXXX" + good()[4:], "bad magic"),
        (MAGIC + bytes([VERSION + 1]) + good()[5:], "unsupported version"),
        (good() + b"\x00", "trailing bytes"),
        (good()[:-1], "truncated"),
        (MAGIC + bytes([VERSION]) + struct.pack(">I", 1 << 30), "truncated"),
    ],
)
def test_each_damage_is_named(data, message):
    with pytest.raises(FormatError, match=message):
        decode_record(data)


def test_unknown_function_id_is_rejected_with_its_offset():
    data = bytearray(good())
    ref_at = 4 + 1 + 4 + 3 + 4  # header, value "val", ref count
    data[ref_at] = 9
    with pytest.raises(FormatError, match="unknown digest function id") as info:
        decode_record(bytes(data))
    assert info.value.offset == ref_at and info.value.got == 9


def test_non_utf8_metadata_is_rejected():
    record = encode_record(Record(b"", (), (("k", "v"),)))
    data = record[:-1] + b"\xff"
    with pytest.raises(FormatError, match="not UTF-8"):
        decode_record(data)


def test_layout_is_stable():
    """A golden encoding: the on-disk and on-S3 record format must not drift silently."""
    record = Record(b"ab", (Digest("blake3", "11" * 32, 5),), (("t", "x"),))
    assert encode_record(record) == (
        b"MICR\x02\x00\x00\x00\x02ab\x00\x00\x00\x01\x02" + b"\x11" * 32 + b"\x00" * 7 + b"\x05"
        b"\x00\x00\x00\x01\x00\x01t\x00\x00\x00\x01x"
    )


def test_version_1_records_are_still_read():
    """tests/data/micr-v1.bin was written by the version-1 encoder (u16 counts), before version 2."""
    data = (Path(__file__).parent.parent / "data" / "micr-v1.bin").read_bytes()
    assert data[4] == 1
    assert decode_record(data) == Record(
        b"action-result-bytes",
        (Digest.of(b"out"), Digest.of(b"log", "blake3")),
        (("content-type", "application/x"), ("tag", "v1")),
    )


def test_more_than_65535_refs_round_trip():
    """Version 1 packed the ref count in 16 bits: 65,536 refs (a node_modules-sized output) failed to encode."""
    refs = tuple(Digest.of(i.to_bytes(4, "big")) for i in range(70_000))
    record = Record(b"v", refs, (("k", "v"),))
    assert decode_record(encode_record(record)) == record


def test_a_record_over_the_bounds_is_refused(monkeypatch):
    monkeypatch.setattr(record_module, "MAX_REFS", 3)
    refs = tuple(Digest.of(bytes([i])) for i in range(4))
    with pytest.raises(BadRequest, match="at most 3 blobs"):
        encode_record(Record(b"", refs))
    encode_record(Record(b"", refs[:3]))
    with pytest.raises(BadRequest, match="metadata entries"):
        encode_record(Record(b"", (), tuple((str(i), "") for i in range(record_module.MAX_METADATA + 1))))
