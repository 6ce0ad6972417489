"""The `cas_store` / `cas_backend` fixtures: every CAS/KV implementation, one parametrized fixture, one suite.

`BACKENDS` maps a name to an async context-manager factory taking the pytest `request` and yielding a
`Backend`. To add one (s3, tiered): write its factory and add one line to `BACKENDS`; fixtures it needs
(`s3_bucket`, `tmp_path`, …) come from `request.getfixturevalue`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from micd.tiers.disk import DiskTier
from micd.tiers.memory import MemoryTier
from tests.fixtures.s3 import s3_conformance_backend, tiered_conformance_backend


@dataclass
class Backend:
    """A store under test. `files_root`: where it keeps blob files, if it has any (for open() auditing)."""

    name: str
    store: Any
    files_root: Path | None = None


@asynccontextmanager
async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    yield Backend("memory", MemoryTier(budget=256 << 20, max_blob=64 << 20))


@asynccontextmanager
async def _disk(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    root = request.getfixturevalue("tmp_path") / "cache"
    tier = DiskTier(root, soft_cap=1 << 30, hard_cap=2 << 30, verify_limit=1 << 20)
    await tier.open()
    try:
        yield Backend("disk", tier, files_root=root)
    finally:
        await tier.close()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Backend]]] = {
    "memory": _memory,
    "disk": _disk,
    "s3": s3_conformance_backend,
    "tiered": tiered_conformance_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
async def cas_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param](request) as made:
        yield made


@pytest.fixture
def cas_store(cas_backend: Backend) -> Any:
    return cas_backend.store
