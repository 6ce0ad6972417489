"""ByteStream resource names of REAPI v2, parsed by locating the keyword segments (as bazel-remote does).

Forms (the leading `{instance}/` is absent for the empty instance; an instance may contain `/`):

    read:   {instance}/blobs/{function/}{hash}/{size}
            {instance}/compressed-blobs/{compressor}/{function/}{hash}/{size}
    write:  {instance}/uploads/{uuid}/blobs/{function/}{hash}/{size}{/optional_metadata}
            {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{function/}{hash}/{size}{/optional_metadata}

The `{function/}` segment appears only for new-style functions (`blake3`); without it the function is SHA256
(the only old-style function of 64 hex characters this server implements).
"""

from __future__ import annotations

from dataclasses import dataclass

from micd.store import Digest
from micd.validate import parse_digest, parse_key
from mickernel.errors import BadRequest
from protocols.bazel_reapi.common import ac_namespace

__all__ = ["COMPRESSORS", "ResourceName", "parse_read_name", "parse_write_name"]

COMPRESSORS = ("zstd",)
_NEW_STYLE = {"blake3": "blake3", "sha256tree": None, "gitsha1": None}
_MAX_NAME = 4096


@dataclass(frozen=True, slots=True)
class ResourceName:
    """A parsed resource name. `compressor` is None for plain blobs; `upload_id` is None for reads."""

    instance: str
    digest: Digest
    compressor: str | None = None
    upload_id: str | None = None


def _instance(parts: list[str], end: int, name: str) -> str:
    instance = "/".join(parts[:end])
    if any(part == "" for part in parts[:end]):
        raise BadRequest("malformed resource name (empty instance segment)", name)
    ac_namespace(instance)  # validates the instance shape
    return instance


def _blob_tail(
    parts: list[str], start: int, name: str, *, allow_metadata: bool
) -> tuple[str | None, Digest, int]:
    """Parse `blobs/...` or `compressed-blobs/<c>/...` at `start`; return (compressor, digest, next index)."""
    pos = start + 1
    compressor = None
    if parts[start] == "compressed-blobs":
        if pos >= len(parts):
            raise BadRequest("malformed resource name (missing compressor)", name)
        compressor = parts[pos]
        if compressor not in COMPRESSORS:
            raise BadRequest("unsupported compressor", compressor)
        pos += 1
    function = "sha256"
    if pos < len(parts) and parts[pos] in _NEW_STYLE:
        implemented = _NEW_STYLE[parts[pos]]
        if implemented is None:
            raise BadRequest("unsupported digest function", parts[pos])
        function = implemented
        pos += 1
    if pos + 2 > len(parts):
        raise BadRequest("malformed resource name (expected …/{hash}/{size})", name)
    digest = parse_digest(function, parts[pos], parts[pos + 1])
    pos += 2
    if pos != len(parts) and not allow_metadata:
        raise BadRequest("malformed resource name (trailing segments)", name)
    return compressor, digest, pos


def _check_length(name: str) -> list[str]:
    if not name or len(name) > _MAX_NAME:
        raise BadRequest("malformed resource name (empty or too long)", name[:100])
    return name.split("/")


def parse_read_name(name: str) -> ResourceName:
    """Parse a Read resource name.

    Raises:
        BadRequest: malformed name, unsupported compressor or digest function, bad hash or size.
    """
    parts = _check_length(name)
    for i, part in enumerate(parts):
        if part in ("blobs", "compressed-blobs"):
            instance = _instance(parts, i, name)
            compressor, digest, _ = _blob_tail(parts, i, name, allow_metadata=False)
            return ResourceName(instance, digest, compressor)
    raise BadRequest("malformed resource name (no blobs/ or compressed-blobs/ segment)", name)


def parse_write_name(name: str) -> ResourceName:
    """Parse a Write / QueryWriteStatus resource name (optional trailing metadata is ignored).

    Raises:
        BadRequest: malformed name, unsupported compressor or digest function, bad hash, size or uuid.
    """
    parts = _check_length(name)
    for i, part in enumerate(parts):
        if part == "uploads":
            if i + 2 >= len(parts) or parts[i + 2] not in ("blobs", "compressed-blobs"):
                raise BadRequest("malformed resource name (expected uploads/{uuid}/blobs/…)", name)
            instance = _instance(parts, i, name)
            upload_id = parse_key(parts[i + 1])
            compressor, digest, _ = _blob_tail(parts, i + 2, name, allow_metadata=True)
            return ResourceName(instance, digest, compressor, upload_id)
    raise BadRequest("malformed resource name (no uploads/ segment)", name)
