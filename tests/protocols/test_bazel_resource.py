"""Pure tests of the ByteStream resource-name parser (tables of accepted and rejected names)."""

from __future__ import annotations

import pytest

from mickernel.errors import BadRequest
from protocols.bazel_reapi.resource import parse_read_name, parse_write_name

H = "ab" * 32


@pytest.mark.parametrize(
    ("name", "instance", "function", "size", "compressor"),
    [
        (f"blobs/{H}/12", "", "sha256", 12, None),
        (f"main/inst/blobs/{H}/3", "main/inst", "sha256", 3, None),
        (f"blobs/blake3/{H}/7", "", "blake3", 7, None),
        (f"a/b/c/compressed-blobs/zstd/blake3/{H}/9", "a/b/c", "blake3", 9, "zstd"),
        (f"compressed-blobs/zstd/{H}/9", "", "sha256", 9, "zstd"),
    ],
)
def test_read_names(name, instance, function, size, compressor):
    parsed = parse_read_name(name)
    assert (
        parsed.instance,
        parsed.digest.function,
        parsed.digest.hex,
        parsed.digest.size,
        parsed.compressor,
    ) == (instance, function, H, size, compressor)
    assert parsed.upload_id is None


@pytest.mark.parametrize(
    ("name", "instance", "uuid", "compressor"),
    [
        (f"uploads/1234-abcd/blobs/{H}/5", "", "1234-abcd", None),
        (f"main/inst/uploads/u1/blobs/{H}/5/some/metadata", "main/inst", "u1", None),
        (f"x/uploads/u1/compressed-blobs/zstd/blake3/{H}/5", "x", "u1", "zstd"),
    ],
)
def test_write_names(name, instance, uuid, compressor):
    parsed = parse_write_name(name)
    assert (parsed.instance, parsed.upload_id, parsed.compressor, parsed.digest.size) == (
        instance,
        uuid,
        compressor,
        5,
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/" * 5000,
        f"blob/{H}/1",
        f"blobs/{H}",
        f"blobs/{H}/1/x",
        f"blobs/{H.upper()}/1",
        f"blobs/{H}/+1",
        f"blobs/md5/{H}/1",
        f"compressed-blobs/{H}/1",
        f"compressed-blobs/brotli/{H}/1",
        f"/blobs/{H}/1",
        f"../blobs/{H}/1",
        f"a/uploads/b/blobs/{H}/1",
        f"actions/blobs/{H}/1",
        f"blobs/gitsha1/{H}/1",
        f"blobs/{H}/0",  # size 0 with a hash other than the empty blob's
    ],
)
def test_rejected_read_names(name):
    with pytest.raises(BadRequest):
        parse_read_name(name)


@pytest.mark.parametrize(
    "name",
    [
        f"blobs/{H}/1",
        f"uploads/blobs/{H}/1",
        f"uploads/u/{H}/1",
        f"uploads/../blobs/{H}/1",
        f"uploads/u/blobs/{H}/x",
        f"inst/uploads/u/compressed-blobs/lz4/{H}/1",
        "uploads/u/blobs",
    ],
)
def test_rejected_write_names(name):
    with pytest.raises(BadRequest):
        parse_write_name(name)
