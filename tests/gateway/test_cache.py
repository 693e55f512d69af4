"""The reply cache: keys, memory LRU/TTL, Redis, single flight, and never a duplicate paid call.

End-to-end tests go through a real gateway to the anthropic provider and a LOCAL STAND-IN of
the Messages API (``tests/gateway/standins``, not Anthropic's service), whose request log
shows exactly how many backend calls were made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc
import pytest

from omniopd.gateway.cache import (
    MemoryCache,
    RedisCache,
    SingleFlight,
    cache_key,
    decode_result,
    encode_result,
    teacher_fingerprint,
)
from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import Chunk, Message, SampleParams, SampleResult

from .gwtools import anthropic_teacher, request, serving
from .standins import anthropic_api
from .standins.server import Fault

KEY_ENV = "STANDIN_CACHE_API_KEY"
KEY = "sk-ant-standin-cache-0b4f"

PARAMS = SampleParams(
    messages=(Message("system", "Be brief."), Message("user", "2+2?")),
    partial_answer="It is",
    n=4,
    max_tokens=16,
    temperature=1.0,
    top_p=0.95,
    stop=("\n",),
    seed=7,
)
RESULT = SampleResult(
    chunks=(Chunk(" 4.", "stop", 2), Chunk(" four ✓", "length", 3)),
    input_tokens=12,
    output_tokens=5,
    continuation="instruction",
)
TEACHER = TeacherConfig(name="t", provider="openai", model="gpt-4o-mini")


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"messages": (Message("user", "2+2?"),)},
        {"partial_answer": "It is "},
        {"n": 5},
        {"max_tokens": 17},
        {"temperature": 0.9},
        {"top_p": 1.0},
        {"stop": ("\n", ".")},
        {"seed": None},
    ],
)
def test_every_sampling_field_changes_the_key(change):
    fp = teacher_fingerprint(TEACHER)
    assert cache_key(fp, dataclasses.replace(PARAMS, **change)) != cache_key(fp, PARAMS)


def test_the_teachers_fingerprint_covers_what_changes_its_samples_only():
    base = teacher_fingerprint(TEACHER)
    for change in [
        {"model": "gpt-4o"},
        {"provider": "anthropic"},
        {"base_url": "http://other"},
        {"continuation": "instruction"},
        {"options": {"reasoning_effort": "low"}},
    ]:
        assert teacher_fingerprint(TEACHER.model_copy(update=change)) != base, change
    # Limits, prices, retries and the name change nothing that is sampled.
    same = TEACHER.model_copy(update={"name": "u", "max_retries": 1, "timeout_s": 5.0})
    assert teacher_fingerprint(same) == base


def test_results_survive_encoding():
    assert decode_result(encode_result(RESULT)) == RESULT


# -- memory ---------------------------------------------------------------------------------------


async def test_memory_cache_is_a_bounded_lru():
    cache = MemoryCache(max_entries=2, ttl_s=60)
    await cache.set("a", RESULT)
    await cache.set("b", RESULT)
    assert await cache.get("a") == RESULT  # a is now the most recent
    await cache.set("c", RESULT)  # evicts b, the least recent
    assert await cache.get("b") is None
    assert await cache.get("a") == RESULT and await cache.get("c") == RESULT
    assert len(cache) == 2


async def test_memory_cache_entries_expire():
    now = [1000.0]
    cache = MemoryCache(max_entries=10, ttl_s=5, clock=lambda: now[0])
    await cache.set("a", RESULT)
    now[0] += 4.9
    assert await cache.get("a") == RESULT
    now[0] += 0.2
    assert await cache.get("a") is None and len(cache) == 0


# -- single flight --------------------------------------------------------------------------------


async def test_single_flight_shares_one_call():
    calls = 0
    gate = asyncio.Event()

    async def call():
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    flights: SingleFlight[int] = SingleFlight()
    waiters = [asyncio.create_task(flights.run("k", call)) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    outcomes = await asyncio.gather(*waiters)
    assert calls == 1
    assert [value for value, _ in outcomes] == [1] * 5
    assert [joined for _, joined in outcomes] == [False, True, True, True, True]
    assert len(flights) == 0
    assert (await flights.run("k", call))[0] == 2  # finished flights are not reused


async def test_single_flight_shares_failures_and_survives_a_caller_leaving():
    gate = asyncio.Event()

    async def failing():
        await gate.wait()
        raise RuntimeError("backend down")

    flights: SingleFlight[int] = SingleFlight()
    leaver = asyncio.create_task(flights.run("k", failing))
    stayer = asyncio.create_task(flights.run("k", failing))
    await asyncio.sleep(0.01)
    leaver.cancel()  # the first caller gives up: the shared call goes on for the other
    gate.set()
    with pytest.raises(RuntimeError, match="backend down"):
        await stayer
    assert leaver.cancelled()


# -- redis ----------------------------------------------------------------------------------------


async def test_redis_cache_round_trip_ttl_and_claims(redis_url, redis_prefix):
    cache = RedisCache(redis_url, prefix=redis_prefix, ttl_s=0.3)
    try:
        assert await cache.get("k") is None
        await cache.set("k", RESULT)
        assert await cache.get("k") == RESULT
        await asyncio.sleep(0.4)
        assert await cache.get("k") is None  # the TTL is Redis's

        assert await cache.claim("k", ttl_s=5)
        assert not await cache.claim("k", ttl_s=5)  # a second replica must wait

        async def owner_finishes():
            await asyncio.sleep(0.1)
            await cache.set("k", RESULT)
            await cache.release("k")

        finisher = asyncio.create_task(owner_finishes())
        assert await cache.wait("k", deadline=time.monotonic() + 100) == RESULT
        await finisher
        # A claim released without a result ends the wait with nothing.
        assert await cache.claim("gone", ttl_s=5)
        await cache.release("gone")
        assert await cache.wait("gone", deadline=time.monotonic() + 100) is None
    finally:
        await cache.aclose()


async def test_unreachable_redis_reads_as_empty_and_logs_once(caplog):
    errors = []
    cache = RedisCache(
        "redis://127.0.0.1:1/0",
        prefix="x:",
        ttl_s=60,
        timeout_s=0.2,
        on_error=lambda: errors.append(1),
    )
    with caplog.at_level(logging.WARNING, logger="omniopd.gateway"):
        assert await cache.get("k") is None
        await cache.set("k", RESULT)  # dropped, no exception
        assert await cache.claim("k", ttl_s=1)  # act as the only replica
        assert await cache.get("k") is None
    assert len(errors) == 1  # later calls skip Redis for a while instead of failing again
    assert sum("Redis unreachable" in r.getMessage() for r in caplog.records) == 1
    await cache.aclose()


# -- end to end -----------------------------------------------------------------------------------


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


def config(url: str):
    return {"teachers": [anthropic_teacher(url, KEY_ENV, max_n=4)]}


def counted(gw, name):
    return gw.metric(f"omniopd_gateway_{name}_total", teacher="claude")


async def test_a_repeated_request_is_served_from_the_cache(backend):
    server, state = backend
    async with serving(config(server.url)) as gw:
        first = await gw.stub.SampleChunks(request("claude", n=2, max_tokens=30, request_id="a"))
        second = await gw.stub.SampleChunks(request("claude", n=2, max_tokens=30, request_id="b"))
        assert not first.cached and second.cached
        assert second.request_id == "b"
        assert list(second.chunks) == list(first.chunks)
        assert second.usage == first.usage  # what the chunks cost when they were sampled
        assert len(state.requests) == 2  # n=2 on the Messages API: two calls, made once
        assert counted(gw, "cache_hits") == 1 and counted(gw, "cache_misses") == 1
        # Tokens and spend count real backend calls only.
        assert (
            gw.metric("omniopd_gateway_tokens_total", teacher="claude", direction="output")
            == first.usage.output_tokens
        )


async def test_cache_off_asks_for_fresh_samples(backend):
    server, state = backend
    async with serving(config(server.url)) as gw:
        await gw.stub.SampleChunks(request("claude"))
        fresh = await gw.stub.SampleChunks(request("claude", cache=False))
        assert not fresh.cached and len(state.requests) == 2


async def test_identical_requests_in_flight_share_one_backend_call(backend):
    server, state = backend
    state.inject(Fault(delay=0.3))
    async with serving(config(server.url)) as gw:
        replies = await asyncio.gather(
            *(gw.stub.SampleChunks(request("claude", request_id=str(i))) for i in range(8))
        )
        assert len(state.requests) == 1
        assert sorted(r.cached for r in replies) == [False] + [True] * 7
        assert len({r.chunks[0].text for r in replies}) == 1
        assert counted(gw, "shared_flights") == 7


async def test_a_failed_call_is_not_cached(backend):
    server, state = backend
    state.inject(Fault(status=400))
    async with serving(config(server.url)) as gw:
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.SampleChunks(request("claude"))
        reply = await gw.stub.SampleChunks(request("claude"))
        assert not reply.cached and len(state.requests) == 2
