"""Bazel remote caching over gRPC: REAPI v2 Capabilities, ContentAddressableStorage, ActionCache and
google.bytestream.ByteStream, translated onto micd's store (`micd.store.Store`).

Spec: bazelbuild/remote-apis `remote_execution.proto` (API 2.0–2.3) and googleapis `bytestream.proto`; the
`.proto` sources are in `_proto/` (regenerate with `python -m protocols.bazel_reapi.regen`). Wire details and
Bazel 4.2.3 quirks: shared/docs/protocols.md §1.

| service / RPC                       | module          | store calls                           |
|-------------------------------------|-----------------|---------------------------------------|
| Capabilities.GetCapabilities        | capabilities.py | —                                     |
| CAS.FindMissingBlobs                | cas.py          | find_missing                          |
| CAS.BatchUpdateBlobs / BatchRead    | cas.py          | put_bytes / get_bytes (per-blob status) |
| CAS.GetTree (stream of pages)       | cas.py          | get_bytes per Directory               |
| ActionCache.Get/UpdateActionResult  | action_cache.py | get_record / put_record (refs)        |
| ByteStream.Read/Write/QueryWriteStatus | bytestream.py | get (offset, limit) / put (streamed)  |

The CAS is shared by every instance name and tool; the action cache has one KV namespace per instance
(`bazel-ac`, `bazel-ac/<instance>`), shared with the HTTP cache (`protocols/bazel_http.py`).
"""

from __future__ import annotations

from micd.frontend import GrpcPart
from micd.store import Store
from protocols.bazel_reapi._proto import bytestream_pb2 as bs_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi.action_cache import ActionCacheServicer
from protocols.bazel_reapi.bytestream import ByteStreamServicer
from protocols.bazel_reapi.capabilities import CapabilitiesServicer
from protocols.bazel_reapi.cas import ContentAddressableStorageServicer
from protocols.bazel_reapi.common import service_handler

__all__ = ["services"]


def services(store: Store) -> GrpcPart:
    """The four services over `store`. Nothing outlives a call: stopping the server ends every upload."""
    by_name = re_pb2.DESCRIPTOR.services_by_name
    return GrpcPart(
        handlers=(
            service_handler(by_name["Capabilities"], CapabilitiesServicer()),
            service_handler(by_name["ContentAddressableStorage"], ContentAddressableStorageServicer(store)),
            service_handler(by_name["ActionCache"], ActionCacheServicer(store)),
            service_handler(bs_pb2.DESCRIPTOR.services_by_name["ByteStream"], ByteStreamServicer(store)),
        )
    )
