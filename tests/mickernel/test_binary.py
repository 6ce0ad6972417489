"""Binary reader and writer: the byte order as asked, every malformed input a FormatError with its offset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mickernel.binary import BIG, LITTLE, Reader, Writer, check_header
from mickernel.errors import FormatError


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (LITTLE, b"HDR" + b"\x01" + b"\x02\x01" + b"\x04\x03\x02\x01" + b"\x08\x07\x06\x05\x04\x03\x02\x01"),
        (BIG, b"HDR" + b"\x01" + b"\x01\x02" + b"\x01\x02\x03\x04" + b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    ],
)
def test_integers_in_the_byte_order_asked(order, expected):
    data = Writer(b"HDR", order=order).u8(1).u16(0x0102).u32(0x01020304).u64(0x0102030405060708).getvalue()
    assert data == expected
    reader = Reader("test", data, 3, order=order)
    assert (reader.u8(), reader.u16(), reader.u32(), reader.u64()) == (1, 0x0102, 0x01020304, 0x0102030405060708)
    reader.end()


@given(st.sampled_from([LITTLE, BIG]), st.text(max_size=50), st.text(max_size=50), st.binary(max_size=50))
def test_round_trip(order, short, long, raw):
    data = Writer(order=order).str16(short).str32(long).raw(raw).getvalue()
    reader = Reader("test", data, order=order)
    assert (reader.str16(), reader.str32(), reader.raw(len(raw))) == (short, long, raw)
    reader.end()


def test_truncation_names_the_field_and_offset():
    reader = Reader("test", b"\x00\x05ab", order=BIG)
    with pytest.raises(FormatError, match="truncated name") as info:
        reader.str16("name")
    assert info.value.offset == 2 and info.value.format == "test"


def test_count_refuses_what_cannot_fit():
    data = Writer(order=LITTLE).u32(1000).raw(b"x" * 10).getvalue()
    with pytest.raises(FormatError, match="items exceeds the data"):
        Reader("test", data, order=LITTLE).count(1, "items")


def test_trailing_bytes_and_bad_utf8():
    reader = Reader("test", b"\x01\xff", order=LITTLE)
    reader.u8()
    with pytest.raises(FormatError, match="trailing bytes"):
        reader.end()
    with pytest.raises(FormatError, match="key is not UTF-8"):
        reader.text(1, "key")


def test_str16_refuses_what_its_length_cannot_say():
    with pytest.raises(ValueError, match="u16"):
        Writer(order=LITTLE).str16("x" * 0x10000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"MIC", "truncated header"),
        (b"MICZ\x01\x00\x00\x00", "bad magic"),
        (b"MICT\x03\x00\x00\x00", "unsupported version"),
        (b"MICT\x01\x00\x01\x00", "reserved bytes not zero"),
        (b"MICT\x01\x00\x00", "truncated header"),
    ],
)
def test_check_header_rejects(data, message):
    with pytest.raises(FormatError, match=message):
        check_header("test", data, b"MICT", (1, 2), reserved=3)


def test_check_header_returns_the_version():
    assert check_header("test", memoryview(b"MICT\x02rest"), b"MICT", (1, 2)) == 2
