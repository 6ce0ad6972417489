"""zstd for `compressed-blobs/zstd/` resources, compressed batch entries and HTTP Content-Encoding.

Decompression is bounded: input is fed in small slices and the output counted against the announced
uncompressed size, so a zstd bomb (an RLE block turns 4 bytes into 128 KiB) costs at most ~32 MiB beyond it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import zstandard

from micd.errors import BadRequest, IntegrityError

__all__ = ["Decompressor", "compress_bytes", "compress_stream", "decompress_bytes"]

_SLICE = 1024
_LEVEL = 1  # speed over ratio: the cache is on loopback


class Decompressor:
    """Incremental single-frame zstd decoder that refuses to produce more than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.produced = 0
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._ended = False
        self._fed = 0

    def feed(self, data: bytes) -> bytes:
        """Decode `data`; return the bytes it completes.

        Raises:
            BadRequest: not zstd, or data after the end of the frame.
            IntegrityError: the output grew past `limit`.
        """
        self._fed += len(data)
        out = []
        view = memoryview(data)
        for start in range(0, len(data), _SLICE):
            if self._ended:
                raise BadRequest("data after the end of the zstd frame")
            try:
                piece = self._obj.decompress(view[start : start + _SLICE])
            except zstandard.ZstdError as exc:
                raise BadRequest("malformed zstd data", str(exc)) from exc
            self.produced += len(piece)
            if self.produced > self.limit:
                raise IntegrityError(
                    f"{self.limit} bytes", f"more than {self.limit} bytes", what="zstd body size"
                )
            if piece:
                out.append(piece)
            if self._obj.eof:
                self._ended = True
                if self._obj.unused_data:
                    raise BadRequest("data after the end of the zstd frame")
        return b"".join(out)

    def finish(self) -> None:
        """Raise BadRequest unless a whole frame was decoded (an empty body counts as an empty blob)."""
        if self._ended or (self._fed == 0 and self.limit == 0):
            return
        raise BadRequest("truncated zstd stream")


def decompress_bytes(data: bytes, limit: int) -> bytes:
    """Decode one whole zstd frame of at most `limit` output bytes."""
    dec = Decompressor(limit)
    out = dec.feed(data)
    dec.finish()
    return out


def compress_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_LEVEL).compress(data)


async def compress_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Encode `chunks` as one zstd frame, yielding output as it is produced."""
    obj = zstandard.ZstdCompressor(level=_LEVEL).compressobj()
    async for chunk in chunks:
        out = obj.compress(chunk)
        if out:
            yield out
    yield obj.flush()
