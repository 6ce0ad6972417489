"""`ByteBudget`: one bound on the bytes many concurrent requests hold in memory, shared by the core's users
(the disk tier's uploads, the REAPI batch calls), so no client count can grow the daemon's memory unbounded.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ByteBudget"]


class ByteBudget:
    """Bytes that requests may hold in memory at once (the disk tier's gathered uploads and streamed batches,
    the REAPI batch calls in process): back-pressure, so memory stays bounded whatever the number of clients.
    A request that gets no budget waits (and stops reading its client) until some is given back. Waiters are
    served in order. Runs on one event loop."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for budget now."""
        return len(self._waiters)

    def try_take(self, nbytes: int) -> bool:
        """Take `nbytes` now if they are free and nobody waits; else False."""
        if self._waiters or self.held + nbytes > self.total:
            return False
        self.held += nbytes
        return True

    async def take(self, nbytes: int) -> int:
        """Wait for and take `nbytes` (at most the whole budget, so one huge chunk cannot wait forever);
        returns the amount taken, to `give` back."""
        nbytes = min(nbytes, self.total)
        if self.try_take(nbytes):
            return nbytes
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if not granted.cancelled():  # granted just before the cancel arrived
                self.give(nbytes)
            elif (nbytes, granted) in self._waiters:  # else `_wake` dropped it already
                self._waiters.remove((nbytes, granted))
                self._wake()
            raise
        return nbytes

    def give(self, nbytes: int) -> None:
        """Give back what `take` or `try_take` took."""
        self.held -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, granted = self._waiters[0]
            if granted.done():  # cancelled, its task not run yet
                self._waiters.popleft()
                continue
            if self.held + nbytes > self.total:
                return
            self._waiters.popleft()
            self.held += nbytes
            granted.set_result(None)
