"""The gRPC edge's one error → status mapping (`protocols.bazel_reapi.common.grpc_code`), row by row."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError

from micd.errors import (
    BadRequest,
    Conflict,
    FormatError,
    IntegrityError,
    NotFound,
    StoreFull,
    TierUnavailable,
    Unauthorized,
)
from protocols.bazel_reapi.common import OutOfRange, UploadBusy, grpc_code

CASES = [
    ("range past the end: OUT_OF_RANGE although it is a BadRequest", OutOfRange("offset 9"), "OUT_OF_RANGE"),
    ("bad request", BadRequest("bad digest"), "INVALID_ARGUMENT"),
    ("bytes do not match the digest", IntegrityError("a", "b"), "INVALID_ARGUMENT"),
    ("protobuf does not parse", DecodeError("truncated"), "INVALID_ARGUMENT"),
    ("another writer holds the upload", UploadBusy("busy"), "ABORTED"),
    ("miss", NotFound("no blob"), "NOT_FOUND"),
    ("over the hard cap", StoreFull(1, 2, 3), "RESOURCE_EXHAUSTED"),
    ("no or wrong token", Unauthorized("token"), "UNAUTHENTICATED"),
    ("S3 down", TierUnavailable("s3"), "UNAVAILABLE"),
    ("unreadable stored record", FormatError("record", "bad magic"), "DATA_LOSS"),
    ("any other core error", Conflict("overlap"), "INTERNAL"),
    ("a bug", RuntimeError("boom"), "INTERNAL"),
]


@pytest.mark.parametrize(("description", "exc", "code"), CASES, ids=[c[0] for c in CASES])
def test_each_error_maps_to_its_status(description, exc, code):
    assert grpc_code(exc) == getattr(grpc.StatusCode, code), description
