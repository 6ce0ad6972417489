"""zstd helpers: exact round trips, bounded output, and a clear error for every malformed input."""

from __future__ import annotations

import os

import pytest
import zstandard

from mickernel.errors import BadRequest, IntegrityError
from protocols.bazel_reapi.compression import PIECE, Decompressor, compress_bytes, decompress_bytes


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(100_000), b"a" * 3_000_000])
def test_round_trip(data):
    assert decompress_bytes(compress_bytes(data), len(data)) == data


def test_output_is_bounded_by_the_announced_size():
    bomb = compress_bytes(b"\0" * (256 << 20))  # ~8 KiB of input
    dec = Decompressor(1000)
    with pytest.raises(IntegrityError):
        list(dec.feed(bomb))
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
    out = b"".join(piece for i in range(0, len(packed), 777) for piece in dec.feed(packed[i : i + 777]))
    dec.finish()
    assert out == data


def test_one_message_of_a_huge_blob_decodes_piece_by_piece():
    """A 16 KiB message (Bazel's chunk size) of a zstd stream of zeros decodes to ~512 MiB: it must come out
    in pieces of at most PIECE bytes, lazily, so a consumer that waits between pieces holds little."""
    import tracemalloc

    obj = zstandard.ZstdCompressor(level=3).compressobj()
    packed = b"".join(obj.compress(bytes(64 << 20)) for _ in range(16)) + obj.flush()  # 1 GiB of zeros
    dec = Decompressor(1 << 30)
    tracemalloc.start()
    try:
        total = 0
        for piece in dec.feed(packed[: 16 << 10]):
            assert len(piece) <= PIECE
            total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total > 256 << 20  # the message really was a bomb-sized one
    # one slice's 32 MiB, which zstandard assembles from parts (x2); a whole-message decode took > 1 GiB
    assert peak < 80 << 20, f"peak {peak >> 20} MiB while decoding {total >> 20} MiB"
