"""Mechanics both halves share, written once: errors, durable atomic writes, file locks, binary codecs,
byte sizes and durations, detached processes.

Imports nothing of `mic`, `micd` or `protocols` (a test checks): both halves import it, so it must stay
below both, and stay light (no asyncio, aiohttp or grpc) so every `mic` command starts fast.
"""
