"""S3 failure containment: every S3 call runs inside `Health.guard`, which tells a miss from a failure.

A 404 on a read is `Missing` (the tier turns it into a miss); anything else (refused, timeout, 5xx, throttling,
a missing bucket) is logged, counted and raised as `TierUnavailable`, and starts a cool-down that grows on each
failure (`cooldown=(min, max)` seconds). While cooling down, calls fail at once, except one probe per period,
so a dead endpoint never adds a timeout to every client request; the first success ends the cool-down.
A call that outlives its deadline (`op_timeout`, or the caller's own) is such a failure: a hung endpoint
costs one wait, then the cool-down answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from micd.errors import TierUnavailable

__all__ = ["Health", "Missing"]

log = logging.getLogger("micd.tiers.s3")  # the tier's logger: operators filter S3 messages by that name

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_READS = {"HEAD", "GET", "DELETE"}


class Missing(Exception):
    """S3 answered 404 to a read (HEAD, GET or DELETE)."""


class Health:
    """Health of one S3 endpoint: failure count, last failure, and the cool-down state."""

    def __init__(self, *, op_timeout: float, cooldown: tuple[float, float]) -> None:
        self._op_timeout = op_timeout
        self._cooldown_min, self._cooldown_max = cooldown
        self._cooldown = 0.0
        self._down_until = 0.0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        """Either `ok` (the last S3 call succeeded) or `degraded` (a failure, until a call succeeds)."""
        return "degraded" if self._cooldown else "ok"

    @contextlib.asynccontextmanager
    async def guard(self, op: str, key: str, deadline: float | None = None) -> AsyncIterator[None]:
        """Run one S3 call: a missing key → `Missing` (reads only), any other failure → logged, cool-down,
        `TierUnavailable`. A missing bucket is a failure, never a miss: uploads must not vanish into it.

        `deadline`: the event-loop time (`loop.time()`) by which the call must end; None: `op_timeout` away.
        """
        if self._cooldown:
            now = time.monotonic()
            if now < self._down_until:
                raise TierUnavailable(f"S3 unavailable (cooling down after: {self.last_error})")
            self._down_until = now + self._cooldown  # this call probes; the others keep failing fast
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._op_timeout
        try:
            async with asyncio.timeout_at(deadline):
                yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if (
                op in _READS
                and error.get("Code") != "NoSuchBucket"
                and (status == "404" or error.get("Code") in _MISSING_CODES)
            ):
                self._succeeded()
                raise Missing from exc
            self._failed(op, key, exc)
            raise TierUnavailable(f"S3 {op} {key}: {exc}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._failed(op, key, exc)
            raise TierUnavailable(f"S3 {op} {key}: {exc!r}") from exc
        self._succeeded()

    def _failed(self, op: str, key: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{op} {key}: {exc!r}"
        first = not self._cooldown
        self._cooldown = min(self._cooldown * 2 or self._cooldown_min, self._cooldown_max)
        self._down_until = time.monotonic() + self._cooldown
        log.warning("S3 %s of %s failed (%s); S3 tier degraded for %.1f s", op, key, exc, self._cooldown)
        if first:
            log.error("S3 tier degraded: serving from local tiers only until S3 answers again")

    def _succeeded(self) -> None:
        if self._cooldown:
            log.warning("S3 tier reachable again")
        self._cooldown = 0.0
