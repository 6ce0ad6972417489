"""Shared set-up for the protocol tests."""

from __future__ import annotations

import pytest

from tests.protocols.bazel_support import new_store, reapi_server


@pytest.fixture
async def env():
    """An in-process REAPI gRPC server over a fresh composed store (`env.store`); test_bazel_http overrides it."""
    store = new_store()
    async with reapi_server(store) as reapi:
        reapi.store = store
        yield reapi
