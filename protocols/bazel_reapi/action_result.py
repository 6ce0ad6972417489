"""Validation of an ActionResult before it enters the action cache, and the CAS blobs it references.

Shared by the gRPC ActionCache and the HTTP cache's `/ac/`. Referenced digests become `Record.refs`, so the
store serves the entry only while every one of them exists (never a hit that points at nothing). That
includes the files inside output directories: they are listed only in the directory's Tree blob, which is
read when the result is stored (Bazel uploads every output, Trees included, before the result).
"""

from __future__ import annotations

import asyncio

from google.protobuf.message import DecodeError

from micd.store import Cas, Digest
from mickernel.errors import BadRequest
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.common import from_proto, off_loop

__all__ = ["MAX_TREE_BYTES", "action_key", "action_result_refs", "decode_action_result", "referenced_digests"]

MAX_TREE_BYTES = 64 << 20
"""The largest output-directory Tree read to list its files (a Tree of ~500k files)."""


def action_key(function: str, hex_: str) -> str:
    """The KV key of an action: function and hash (the size adds nothing; HTTP clients do not send it)."""
    return f"{function}:{hex_}"


def decode_action_result(data: bytes) -> re_pb2.ActionResult:
    """Parse bytes as an ActionResult.

    Raises:
        BadRequest: the bytes are not a valid ActionResult message.
    """
    result = re_pb2.ActionResult()
    try:
        result.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest("body does not parse as an ActionResult", str(exc)) from exc
    return result


def _path(path: str, what: str) -> None:
    if not path or path.startswith("/") or "\x00" in path or ".." in path.split("/"):
        raise BadRequest(f"malformed {what} path", path)


def _optional(digest: re_pb2.Digest, function: str, refs: dict[Digest, None]) -> None:
    if digest.hash or digest.size_bytes:
        parsed = from_proto(digest, function)
        if not parsed.is_empty:
            refs[parsed] = None


def referenced_digests(result: re_pb2.ActionResult, function: str) -> tuple[Digest, ...]:
    """Check every path and digest of `result`; return the distinct non-empty blobs it references.

    Raises:
        BadRequest: an empty, absolute or `..` path, a missing tree digest, or a malformed digest.
    """
    refs: dict[Digest, None] = {}
    for output in result.output_files:
        _path(output.path, "output file")
        if not output.HasField("digest"):
            raise BadRequest("output file without a digest", output.path)
        _optional(output.digest, function, refs)
    for directory in result.output_directories:
        _path(directory.path, "output directory")
        if not directory.tree_digest.hash:
            raise BadRequest("output directory without a tree digest", directory.path)
        _optional(directory.tree_digest, function, refs)
        _optional(directory.root_directory_digest, function, refs)
    for link in (*result.output_symlinks, *result.output_file_symlinks, *result.output_directory_symlinks):
        _path(link.path, "output symlink")
        if not link.target:
            raise BadRequest("output symlink without a target", link.path)
    _optional(result.stdout_digest, function, refs)
    _optional(result.stderr_digest, function, refs)
    return tuple(refs)


async def action_result_refs(store: Cas, result: re_pb2.ActionResult, function: str) -> tuple[Digest, ...]:
    """`referenced_digests` plus every file inside the result's output directories, read from their Trees.

    Raises:
        BadRequest: what `referenced_digests` rejects, or an output directory whose Tree is not in the CAS,
            is larger than `MAX_TREE_BYTES`, or does not parse as a Tree.
    """
    outputs = sum(
        len(field)
        for field in (
            result.output_files,
            result.output_directories,
            result.output_symlinks,
            result.output_file_symlinks,
            result.output_directory_symlinks,
        )
    )
    refs = dict.fromkeys(await off_loop(outputs, referenced_digests, result, function))
    for directory in result.output_directories:
        tree_digest = from_proto(directory.tree_digest, function)
        if tree_digest.size > MAX_TREE_BYTES:
            raise BadRequest(f"output directory's Tree is larger than {MAX_TREE_BYTES} bytes", directory.path)
        data = await store.get_bytes(tree_digest)
        if data is None:
            raise BadRequest("output directory's Tree is not in the CAS (upload it first)", directory.path)
        # A Tree may list hundreds of thousands of files: read it off the event loop.
        await asyncio.to_thread(_add_tree_files, data, directory.path, function, refs)
    return tuple(refs)


def _add_tree_files(data: bytes, path: str, function: str, refs: dict[Digest, None]) -> None:
    """Add the non-empty file digests listed in a serialized Tree to `refs`."""
    tree = re_pb2.Tree()
    try:
        tree.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest("output directory's Tree does not parse", path) from exc
    for node in (tree.root, *tree.children):
        for file in node.files:
            _optional(file.digest, function, refs)
