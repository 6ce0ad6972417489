"""Byte sizes and durations as people write them in configuration."""

from __future__ import annotations

import pytest

from mickernel.units import parse_byte_size, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("4KiB", 4096),
        ("4k", 4096),
        ("512MiB", 512 << 20),
        ("10GiB", 10 << 30),
        ("1.5 GiB", 3 << 29),
        ("2T", 2 << 40),
        ("7B", 7),
    ],
)
def test_parse_byte_size(text, expected):
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "1XB", "MiB", True, -5])
def test_parse_byte_size_rejects(text):
    with pytest.raises(ValueError):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0.0),
        (90, 90.0),
        ("90", 90.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        (1.5, 1.5),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "-3", "5 weeks", False, float("nan"), -0.5])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)
