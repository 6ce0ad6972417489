"""REAPI Capabilities: what Bazel checks before it uses the cache (API 2.0–2.3, digest functions, AC updates,
compressors, batch limit). Bazel 4.2.3 refuses a server whose high_api_version is unset.
"""

from __future__ import annotations

import grpc

from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2_grpc as re_grpc
from protocols.bazel_reapi._proto import semver_pb2
from protocols.bazel_reapi.common import MAX_BATCH_TOTAL_SIZE, ac_namespace

__all__ = ["CapabilitiesServicer", "server_capabilities"]


def server_capabilities() -> re_pb2.ServerCapabilities:
    """The capabilities of this cache-only server (the same for every instance name)."""
    zstd = [re_pb2.Compressor.ZSTD]
    return re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256, re_pb2.DigestFunction.BLAKE3],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(update_enabled=True),
            cache_priority_capabilities=re_pb2.PriorityCapabilities(
                priorities=[re_pb2.PriorityCapabilities.PriorityRange(min_priority=0, max_priority=0)]
            ),
            max_batch_total_size_bytes=MAX_BATCH_TOTAL_SIZE,
            symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.ALLOWED,
            supported_compressors=zstd,
            supported_batch_update_compressors=zstd,
        ),
        low_api_version=semver_pb2.SemVer(major=2, minor=0),
        high_api_version=semver_pb2.SemVer(major=2, minor=3),
    )


class CapabilitiesServicer(re_grpc.CapabilitiesServicer):
    def __init__(self) -> None:
        self._capabilities = server_capabilities()

    async def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.ServerCapabilities:
        ac_namespace(request.instance_name)
        return self._capabilities
