"""Pure validation of untrusted identifiers: one compiled pattern per shape, a distinct error for each failure.

Protocol modules call these before they touch the store, so nothing malformed (path traversal, odd
characters, wrong hash length) ever reaches a tier or a file name.
"""

from __future__ import annotations

import re

from micd.store import EMPTY_HEX, FUNCTIONS, Digest
from mickernel.errors import BadRequest

__all__ = [
    "HEX64",
    "KEY",
    "NAMESPACE",
    "parse_blob_size",
    "parse_digest",
    "parse_function",
    "parse_hash",
    "parse_key",
    "parse_namespace",
]

HEX64 = re.compile(r"[0-9a-f]{64}")
# Namespaces are tool + scope, e.g. "bazel-ac/main/inst"; segments never "." or "..".
NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
# Record keys are opaque tokens chosen by the protocol (hashes, tags, narinfo names).
KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+=@-]{0,254}")
MAX_BLOB_SIZE = 1 << 40


def parse_function(function: str) -> str:
    """Return the digest function name, or raise BadRequest."""
    if function not in FUNCTIONS:
        raise BadRequest("unsupported digest function", function)
    return function


def parse_blob_size(size: str | int) -> int:
    """Parse the size of a digest: a plain decimal count of bytes (0 ≤ size ≤ 1 TiB), not a "512MiB"-style
    configuration size (`mickernel.units.parse_byte_size`)."""
    if isinstance(size, str):
        # isascii: str.isdigit also accepts "١٢" (parsed as 12) and "²" (which int() rejects with ValueError).
        if not size.isascii() or not size.isdigit() or len(size) > 16:
            raise BadRequest("malformed size", size)
        size = int(size)
    if not 0 <= size <= MAX_BLOB_SIZE:
        raise BadRequest("size out of range", size)
    return size



def parse_hash(function: str, hex_: str) -> str:
    """Check a hash alone (for paths that carry no size); the hex must be lowercase and the right length."""
    if not HEX64.fullmatch(hex_):
        raise BadRequest(f"malformed {parse_function(function)} hash", hex_)
    return hex_


def parse_digest(function: str, hex_: str, size: str | int) -> Digest:
    """Build a Digest from untrusted parts; the hex must be lowercase and the right length, and a size of 0
    comes only with the hash of b"" (any other size-0 digest names a blob that cannot exist)."""
    function = parse_function(function)
    digest = Digest(function, parse_hash(function, hex_), parse_blob_size(size))
    if digest.size == 0 and digest.hex != EMPTY_HEX[function]:
        raise BadRequest(f"size 0 with a hash other than the empty blob's {function} hash", hex_)
    return digest


def parse_namespace(namespace: str) -> str:
    """Check a KV namespace; rejects empty, '..' segments and anything outside the pattern."""
    if len(namespace) > 512 or not NAMESPACE.fullmatch(namespace) or ".." in namespace.split("/"):
        raise BadRequest("malformed namespace", namespace)
    return namespace


def parse_key(key: str) -> str:
    """Check a KV key: a single safe path segment."""
    if not KEY.fullmatch(key) or key in (".", ".."):
        raise BadRequest("malformed key", key)
    return key
