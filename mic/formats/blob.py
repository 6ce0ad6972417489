"""MICB: one file's bytes, zstd-compressed; the object key is the BLAKE3 of the uncompressed bytes.

Layout (little-endian):
    offset  width  field
    0       4      magic  b"MICB"
    4       1      version (1)
    5       4      u32 uncompressed size (≤ MAX_SIZE, 4 MiB: larger files are MICC, chunks of this size)
    9       …      one zstd frame whose content is exactly `size` bytes
Invariants: `size` ≤ MAX_SIZE, and the frame decompresses to exactly `size` bytes (both checked; a bomb cannot
allocate more: a header over the bound is refused, a frame that declares another content size is refused
before decompressing, one that declares none is read in pieces).
"""

from __future__ import annotations

import struct
import threading

import zstandard

from mickernel.binary import check_header
from mickernel.errors import FormatError

__all__ = ["MAGIC", "MAX_SIZE", "VERSION", "decode_blob", "encode_blob"]

MAGIC = b"MICB"
VERSION = 1
MAX_SIZE = 4 * 1024 * 1024
"""The largest MICB: a file's chunk size (`chunked.CHUNK_SIZE`), so an object from shared storage can make a
reader allocate at most this much."""
_HEADER = struct.Struct("<4sBI")
_local = threading.local()  # zstd contexts are costly to create and not thread-safe: one per thread


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    compressor: zstandard.ZstdCompressor = cache[level]
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    decompressor: zstandard.ZstdDecompressor = _local.decompressor
    return decompressor


def _decompress_bounded(body: bytes, size: int) -> bytes:
    """Decompress a frame that does not declare its size (mic writes none, others may) in pieces, stopping
    past `size`: memory follows the real output, not the header's claim, and a bomb stops at `size` + 1 MiB."""
    out = bytearray()
    with _decompressor().stream_reader(body) as reader:
        while piece := reader.read(1 << 20):
            out += piece
            if len(out) > size:
                break
    return bytes(out)


def encode_blob(data: bytes, *, level: int = 3) -> bytes:
    """Encode `data` (at most MAX_SIZE bytes; callers chunk larger files) as a MICB object."""
    if len(data) > MAX_SIZE:
        raise ValueError(f"MICB holds at most {MAX_SIZE} bytes, got {len(data)}")
    return _HEADER.pack(MAGIC, VERSION, len(data)) + _compressor(level).compress(data)


def decode_blob(raw: bytes | memoryview) -> bytes:
    """Decode a MICB object to its uncompressed bytes.

    Raises:
        FormatError: bad magic or version, truncated header, a size over MAX_SIZE, corrupt frame, or a size
            mismatch.
    """
    check_header("MICB", raw, MAGIC, (VERSION,))
    if len(raw) < _HEADER.size:
        raise FormatError("MICB", "truncated header", offset=0, expected=_HEADER.size, got=len(raw))
    _, _, size = _HEADER.unpack_from(raw)
    if size > MAX_SIZE:
        raise FormatError("MICB", "size over the 4 MiB bound", offset=5, expected=MAX_SIZE, got=size)
    body = bytes(raw[_HEADER.size :])
    try:
        # zstd allocates what the frame declares, ignoring max_output_size: compare it with the header first
        declared = zstandard.get_frame_parameters(body).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            out = _decompress_bounded(body, size)
        elif declared != size:
            raise FormatError(
                "MICB", "frame size differs from the header's", offset=5, expected=size, got=declared
            )
        else:
            out = _decompressor().decompress(body, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError("MICB", f"corrupt zstd frame: {exc}", offset=_HEADER.size) from exc
    if len(out) != size:
        raise FormatError("MICB", "size mismatch", offset=5, expected=size, got=len(out))
    return out
