"""ObjectStore on S3 (or any S3-compatible server) via aioboto3, using S3's own conditional writes.

`put_if_absent` is `PutObject` with `If-None-Match: *` and `put_if_match` is `PutObject` with `If-Match: <etag>`:
S3 answers 412 Precondition Failed (or 409 ConditionalRequestConflict while a racing write is in flight) to the
loser, so S3 itself linearizes concurrent landers. Credentials come from the standard AWS chain; an S3-compatible
endpoint from `vcs.s3_endpoint_url`. Failures that a user can fix become `StoreUnavailable` naming what to set.
"""

from __future__ import annotations

import contextlib
from typing import Any

from mic.errors import PreconditionFailed, StoreUnavailable
from mic.objectstore import Obj, validate_key

__all__ = ["S3ObjectStore"]

_LOST = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3ObjectStore:
    """An ObjectStore over `s3://bucket/prefix`. The client opens lazily and is reused until `close()`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3ObjectStore(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url})"

    async def _s3(self) -> Any:
        if self._client is None:
            import aioboto3
            from botocore.config import Config

            stack = contextlib.AsyncExitStack()
            session = aioboto3.Session()
            config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
            self._client = await stack.enter_async_context(
                session.client("s3", endpoint_url=self.endpoint_url, config=config)
            )
            self._stack = stack
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _translate(self, exc: Exception) -> Exception:
        """Map botocore failures a user can fix to StoreUnavailable with the exact setting to change."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, NoCredentialsError):
            return StoreUnavailable(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            )
        if isinstance(exc, EndpointConnectionError):
            return StoreUnavailable(
                f"cannot reach the S3 endpoint for {where}: check MIC_S3_ENDPOINT_URL (vcs.s3_endpoint_url)"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return StoreUnavailable(
                    f"bucket {self.bucket!r} does not exist{' at ' + self.endpoint_url if self.endpoint_url else ''}:"
                    " create it, or set MIC_STORE_URL (vcs.store_url) to an existing s3://bucket/prefix"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return StoreUnavailable(
                    f"S3 refused the credentials for {where} ({code}): set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to credentials allowed to use the bucket"
                )
        return exc

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    async def get(self, key: str) -> Obj | None:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
            async with response["Body"] as body:
                data = await body.read()
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._translate(exc) from exc
        return Obj(data, response["ETag"])

    async def _put(self, key: str, data: bytes, condition: str, **extra: str) -> str:
        s3 = await self._s3()
        try:
            response = await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        except Exception as exc:
            if self._code(exc) in _LOST or (condition != "already exists" and self._code(exc) == "NoSuchKey"):
                raise PreconditionFailed(key, condition) from exc
            raise self._translate(exc) from exc
        return str(response["ETag"])

    async def put_if_absent(self, key: str, data: bytes) -> str:
        return await self._put(key, data, "already exists", IfNoneMatch="*")

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        return await self._put(key, data, f"ETag is no longer {etag}", IfMatch=etag)

    async def list(self, prefix: str) -> list[str]:
        s3 = await self._s3()
        keys: list[str] = []
        try:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except Exception as exc:
            raise self._translate(exc) from exc
        return sorted(keys)

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        try:
            await s3.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._translate(exc) from exc

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()
