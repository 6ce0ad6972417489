"""REAPI ActionCache: one KV namespace per instance name (`bazel-ac/<instance>`), entries served only while
every referenced blob exists; UpdateActionResult validates the result before storing it.
"""

from __future__ import annotations

import grpc

from micd.store import Record, Store
from mickernel.errors import BadRequest, NotFound
from protocols.bazel_reapi._proto import remote_execution_pb2 as re_pb2
from protocols.bazel_reapi._proto import remote_execution_pb2_grpc as re_grpc
from protocols.bazel_reapi.action_result import action_key, action_result_refs, decode_action_result
from protocols.bazel_reapi.common import ac_namespace, digest_function, from_proto

__all__ = ["INLINE_BUDGET", "ActionCacheServicer"]

INLINE_BUDGET = 1 << 20  # bytes a GetActionResult may inline (stdout, stderr, requested files) in total


class ActionCacheServicer(re_grpc.ActionCacheServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    async def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.ActionResult:
        function = digest_function(request.digest_function)
        namespace = ac_namespace(request.instance_name)
        digest = from_proto(request.action_digest, function)
        record = await self._store.get_record(namespace, action_key(digest.function, digest.hex))
        if record is None:
            raise NotFound(f"no action result for {digest}")
        try:
            result = decode_action_result(record.value)
        except BadRequest as exc:  # stored bytes, not the request, are at fault: a miss Bazel recovers from
            raise NotFound(f"stored action result for {digest} does not parse") from exc
        await self._inline(request, result)
        return result

    async def _inline(self, request: re_pb2.GetActionResultRequest, result: re_pb2.ActionResult) -> None:
        """Fill stdout_raw / stderr_raw / contents when asked, within INLINE_BUDGET (inlining is optional)."""
        budget = INLINE_BUDGET
        function = digest_function(request.digest_function)
        wanted = set(request.inline_output_files)
        targets = []
        if request.inline_stdout and result.HasField("stdout_digest"):
            targets.append((result.stdout_digest, result, "stdout_raw"))
        if request.inline_stderr and result.HasField("stderr_digest"):
            targets.append((result.stderr_digest, result, "stderr_raw"))
        targets += [(f.digest, f, "contents") for f in result.output_files if f.path in wanted]
        for proto_digest, message, field in targets:
            if proto_digest.size_bytes > budget:
                continue
            data = await self._store.get_bytes(from_proto(proto_digest, function))
            if data is not None:
                setattr(message, field, data)
                budget -= len(data)

    async def UpdateActionResult(
        self, request: re_pb2.UpdateActionResultRequest, context: grpc.aio.ServicerContext
    ) -> re_pb2.ActionResult:
        function = digest_function(request.digest_function)
        namespace = ac_namespace(request.instance_name)
        digest = from_proto(request.action_digest, function)
        if not request.HasField("action_result"):
            raise BadRequest("UpdateActionResult without an action_result")
        result = request.action_result
        refs = await action_result_refs(self._store, result, function)
        await self._store.put_record(namespace, action_key(digest.function, digest.hex), Record(result.SerializeToString(), refs))
        return result
