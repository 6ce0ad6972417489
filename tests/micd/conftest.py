"""Shared set-up for the micd tier tests: disk tiers opened (and closed) per test, and a bucket on moto."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from micd.tiers.disk import DiskTier


@pytest.fixture
def disk_defaults() -> dict:
    """Keyword defaults of `make_tier`; a module overrides this fixture to give its tiers other caps."""
    return {"verify_limit": 64 << 10, "journal_segment_bytes": 2 << 20}


@pytest.fixture
async def make_tier(tmp_path, disk_defaults):
    """Factory of opened `DiskTier`s (default root `tmp_path/cache`), all closed when the test ends."""
    opened: list[DiskTier] = []

    async def make(root: Path | None = None, **kw) -> DiskTier:
        tier = DiskTier(root or tmp_path / "cache", **{**disk_defaults, **kw})
        await tier.open()
        opened.append(tier)
        return tier

    yield make
    for tier in opened:
        await tier.close()


@pytest.fixture
def bucket(s3_server, s3_env):
    """A fresh bucket on the shared moto server."""
    return s3_server.create_bucket()


@pytest.fixture
def boto(s3_server):
    """A plain boto3 client straight to moto (no proxy), to inspect or tamper with objects."""
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url)
