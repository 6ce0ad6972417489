"""Table tests for micd/validate.py: every accepted shape, and each rejection with its own message."""

from __future__ import annotations

import pytest

from micd.store import Digest
from micd.validate import parse_blob_size, parse_digest, parse_function, parse_key, parse_namespace
from mickernel.errors import BadRequest

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("function", ["sha256", "blake3"])
def test_parse_function_accepts(function):
    assert parse_function(function) == function


@pytest.mark.parametrize("function", ["", "SHA256", "md5", "sha-256", "blake3 "])
def test_parse_function_rejects(function):
    with pytest.raises(BadRequest, match="unsupported digest function"):
        parse_function(function)


@pytest.mark.parametrize(
    ("raw", "size"),
    [("0", 0), ("1", 1), ("123456", 123456), (0, 0), (1 << 40, 1 << 40), ("0007", 7)],
)
def test_parse_blob_size_accepts(raw, size):
    assert parse_blob_size(raw) == size


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "malformed size"),
        ("-1", "malformed size"),
        ("1.5", "malformed size"),
        (" 1", "malformed size"),
        ("1e3", "malformed size"),
        ("12345678901234567", "malformed size"),
        ("١٢", "malformed size"),  # Arabic-Indic digits: str.isdigit() is True and int() would say 12
        ("²", "malformed size"),  # superscript: str.isdigit() is True but int() raises ValueError
        (-1, "out of range"),
        ((1 << 40) + 1, "out of range"),
        ("9999999999999999", "out of range"),
    ],
)
def test_parse_blob_size_rejects(raw, message):
    with pytest.raises(BadRequest, match=message):
        parse_blob_size(raw)


@pytest.mark.parametrize("function", ["sha256", "blake3"])
def test_parse_digest_accepts(function):
    assert parse_digest(function, HEX, "42") == Digest(function, HEX, 42)
    assert parse_digest(function, Digest.empty(function).hex, "0") == Digest.empty(function)


@pytest.mark.parametrize(
    ("function", "hex_", "size", "message"),
    [
        ("md5", HEX, "1", "unsupported digest function"),
        ("sha256", HEX.upper(), "1", "malformed sha256 hash"),
        ("sha256", HEX[:-1], "1", "malformed sha256 hash"),
        ("sha256", HEX + "0", "1", "malformed sha256 hash"),
        ("blake3", "g" * 64, "1", "malformed blake3 hash"),
        ("sha256", "../" + HEX[3:], "1", "malformed sha256 hash"),
        ("sha256", HEX, "x", "malformed size"),
        ("sha256", HEX, -5, "out of range"),
        ("sha256", HEX, "0", "size 0 with a hash other than the empty blob's"),
        ("blake3", Digest.empty("sha256").hex, 0, "size 0 with a hash other than the empty blob's"),
    ],
)
def test_parse_digest_rejects(function, hex_, size, message):
    with pytest.raises(BadRequest, match=message):
        parse_digest(function, hex_, size)


@pytest.mark.parametrize(
    "namespace",
    [
        "bazel-ac",
        "bazel-ac/main",
        "bazel-ac/main/inst",
        "oci/library/Alpine_3.19",
        "nix/x+y",
        "a",
        "gradle/x.y",
        "a.b-c_d/E",
    ],
)
def test_parse_namespace_accepts(namespace):
    assert parse_namespace(namespace) == namespace


@pytest.mark.parametrize(
    "namespace",
    [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "..",
        "a/..",
        "a/../b",
        "a/.",
        "a/.x",
        "Upper",
        "-dash",
        "a/b c",
        "a/b\x00",
        "a\\b",
        "a/" + "x" * 600,
    ],
)
def test_parse_namespace_rejects(namespace):
    with pytest.raises(BadRequest, match="malformed namespace"):
        parse_namespace(namespace)


@pytest.mark.parametrize("key", ["k", HEX, "v1.2.3", "name:tag", "a=b", "x@y", "A_b-c+d", "k" * 255])
def test_parse_key_accepts(key):
    assert parse_key(key) == key


@pytest.mark.parametrize(
    "key", ["", ".", "..", ".hidden", "-x", "a/b", "a\\b", "../x", "k" * 256, "sp ace", "nul\x00", "é"]
)
def test_parse_key_rejects(key):
    with pytest.raises(BadRequest, match="malformed key"):
        parse_key(key)
