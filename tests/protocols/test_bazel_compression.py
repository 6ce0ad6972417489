"""zstd helpers: exact round trips, bounded output, and a clear error for every malformed input."""

from __future__ import annotations

import os

import pytest

from micd.errors import BadRequest, IntegrityError
from protocols.bazel_reapi.compression import Decompressor, compress_bytes, decompress_bytes


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(100_000), b"a" * 3_000_000])
def test_round_trip(data):
    assert decompress_bytes(compress_bytes(data), len(data)) == data


def test_output_is_bounded_by_the_announced_size():
    bomb = compress_bytes(b"\0" * (256 << 20))  # ~8 KiB of input
    dec = Decompressor(1000)
    with pytest.raises(IntegrityError):
        dec.feed(bomb)
    assert dec.produced <= 1000 + (40 << 20)  # stopped within one 1 KiB input slice, not at 256 MiB


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not zstd", BadRequest),
        (compress_bytes(b"hello")[:-3], BadRequest),  # truncated frame
        (compress_bytes(b"hello") + b"junk", BadRequest),  # data after the frame
    ],
    ids=["garbage", "truncated", "trailing"],
)
def test_malformed_input(body, error):
    with pytest.raises(error):
        decompress_bytes(body, 5)


def test_incremental_feeding_matches_one_shot():
    data = os.urandom(50_000) * 4
    packed = compress_bytes(data)
    dec = Decompressor(len(data))
    out = b"".join(dec.feed(packed[i : i + 777]) for i in range(0, len(packed), 777))
    dec.finish()
    assert out == data
