"""Two gateway replicas sharing one Redis: one cache, one set of limits; Redis away is no outage.

Each replica is a separate server with its own clients and state, sharing only Redis (real, at
``REDIS_TEST_URL``; the keys live under this test's own prefix). Both front the anthropic
provider and one LOCAL STAND-IN of the Messages API (``tests/gateway/standins``, not Anthropic's
service), whose request log counts the backend calls of both.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import grpc
import pytest

from .gwtools import anthropic_teacher, call_error, clear_of_window_edge, request, serving
from .standins import anthropic_api
from .standins.server import Fault

KEY_ENV = "STANDIN_REPLICAS_API_KEY"
KEY = "sk-ant-standin-replicas-4a8e"


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
def backend(standin, monkeypatch):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    return server, state


@pytest.fixture
def replicas(backend, redis_url, redis_prefix):
    """Start two replicas of a gateway whose config has the given limits."""
    server, _ = backend

    async def start(stack: AsyncExitStack, **limits):
        config = {"teachers": [anthropic_teacher(server.url, KEY_ENV, limits=limits)]}
        return [
            await stack.enter_async_context(
                serving(config, redis_url=redis_url, redis_prefix=redis_prefix)
            )
            for _ in range(2)
        ]

    return start


async def test_one_cache_for_both(backend, replicas):
    _, state = backend
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack)
        first = await a.stub.SampleChunks(request("claude", n=2))
        second = await b.stub.SampleChunks(request("claude", n=2))
        assert not first.cached and second.cached
        assert list(second.chunks) == list(first.chunks)
        assert len(state.requests) == 2  # n=2 Messages calls, made by a only
        assert b.backend_calls("claude") == 0


async def test_identical_requests_on_both_at_once_make_one_backend_call(backend, replicas):
    _, state = backend
    state.inject(Fault(delay=0.5))
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack)
        first = asyncio.ensure_future(a.stub.SampleChunks(request("claude")))
        await asyncio.sleep(0.1)  # a has claimed the request and is calling the backend
        second = await b.stub.SampleChunks(request("claude"))
        first = await first
        assert len(state.requests) == 1
        assert not first.cached and second.cached
        assert second.chunks[0].text == first.chunks[0].text
        assert b.metric("omniopd_gateway_shared_flights_total", teacher="claude") == 1


async def test_one_request_budget_for_both(backend, replicas):
    _, state = backend
    async with AsyncExitStack() as stack:
        await clear_of_window_edge()
        a, b = await replicas(stack, requests_per_minute=2, max_queue_wait_s=0)
        await a.stub.SampleChunks(request("claude", content="one?"))
        await b.stub.SampleChunks(request("claude", content="two?"))
        for replica in (a, b):
            err = await call_error(replica.stub.SampleChunks(request("claude", content="three?")))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(state.requests) == 2


async def test_one_concurrency_limit_for_both(backend, replicas):
    _, state = backend
    state.inject(Fault(delay=0.6))
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, max_concurrency=1, max_queue_wait_s=0.2)
        slow = asyncio.ensure_future(a.stub.SampleChunks(request("claude", content="slow?")))
        await asyncio.sleep(0.15)
        err = await call_error(b.stub.SampleChunks(request("claude", content="other?")))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrency" in err.details()
        assert (await slow).chunks
        # The slot is free again, for either replica.
        assert (await b.stub.SampleChunks(request("claude", content="other?"))).chunks


async def test_unreachable_redis_serves_without_cache_logs_once_and_counts(backend, caplog):
    server, state = backend
    config = {"teachers": [anthropic_teacher(server.url, KEY_ENV, limits={"max_concurrency": 2})]}
    with caplog.at_level(logging.WARNING):
        async with serving(config, redis_url="redis://127.0.0.1:1/0") as gw:
            for _ in range(3):
                reply = await gw.stub.SampleChunks(request("claude"))
                assert reply.chunks
            assert gw.metric("omniopd_gateway_cache_errors_total") >= 1
    cache_warnings = [
        r for r in caplog.records if "Redis unreachable for the shared cache" in r.getMessage()
    ]
    assert len(cache_warnings) == 1
    # Without a cache each request went to the backend; none failed for Redis's sake.
    assert len(state.requests) == 3
