"""zstd for `compressed-blobs/zstd/` resources, compressed batch entries and HTTP Content-Encoding.

Decompression is bounded: input is fed in 1 KiB slices, the output is counted against the announced
uncompressed size and handed on in pieces of at most 1 MiB as it is produced. zstd turns at most 4 input
bytes into 128 KiB (an RLE block), so one slice yields at most 32 MiB (zstandard assembles it from parts, so
~64 MiB at the peak): that, not the compression ratio of a whole message (a 16 KiB message of zeros decodes
to 512 MiB), bounds the memory of a decode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import zstandard

from mickernel.errors import BadRequest, IntegrityError

__all__ = ["PIECE", "Decompressor", "compress_bytes", "compress_stream", "decompress_bytes"]

_SLICE = 1024
PIECE = 1 << 20
"""The largest piece `Decompressor.feed` yields."""
_LEVEL = 1  # speed over ratio: the cache is on loopback


class Decompressor:
    """Incremental single-frame zstd decoder that refuses to produce more than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.produced = 0
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._ended = False
        self._fed = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode `data`, yielding the bytes it completes in pieces of at most `PIECE` bytes, lazily: a
        consumer that waits between pieces holds at most one slice's output.

        Raises:
            BadRequest: not zstd, or data after the end of the frame.
            IntegrityError: the output grew past `limit`.
        """
        self._fed += len(data)
        out: list[bytes] = []
        pending = 0
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
            if self._obj.eof:
                self._ended = True
                if self._obj.unused_data:
                    raise BadRequest("data after the end of the zstd frame")
            if len(piece) >= PIECE:  # a big slice's output: what came before it first, then it in parts
                if out:
                    yield b"".join(out)
                    out, pending = [], 0
                yield from _split(piece)
            elif piece:
                out.append(piece)
                pending += len(piece)
                if pending >= PIECE:
                    yield from _split(b"".join(out))  # under 2 PIECE
                    out, pending = [], 0
        if out:
            yield b"".join(out)

    def finish(self) -> None:
        """Raise BadRequest unless a whole frame was decoded (an empty body counts as an empty blob)."""
        if self._ended or (self._fed == 0 and self.limit == 0):
            return
        raise BadRequest("truncated zstd stream")


def _split(data: bytes) -> Iterator[bytes]:
    """`data` in pieces of at most `PIECE` bytes."""
    if len(data) <= PIECE:
        yield data
        return
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


def decompress_bytes(data: bytes, limit: int) -> bytes:
    """Decode one whole zstd frame of at most `limit` output bytes (in memory: for small blobs)."""
    dec = Decompressor(limit)
    out = b"".join(dec.feed(data))
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
