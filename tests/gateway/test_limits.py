"""Per-teacher limits, one suite run against both storages (memory, and Redis shared by replicas).

One limiter test uses a 1-second window in place of the minute so that waiting for budget to
free can be seen; the end-to-end tests go through a real gateway to the anthropic provider and
a LOCAL STAND-IN of the Messages API (``tests/gateway/standins``, not Anthropic's service).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.errors import GatewayError
from omniopd.gateway.limits import Cost, LimitHooks, RateStore, TeacherLimiter, redis_storage_uri

from .gwtools import (
    anthropic_teacher,
    call_error,
    clear_of_window_edge,
    request,
    retry_after_of,
    serving,
)
from .standins import anthropic_api
from .standins.server import Fault

KEY_ENV = "STANDIN_LIMITS_API_KEY"
KEY = "sk-ant-standin-limits-77e1"
ONE = Cost(requests=1, input_tokens=10)


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request):
    """Build limiters over one storage; with Redis, every limiter built shares one budget."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        store = RateStore(url, prefix)
    else:
        url, prefix, store = None, "unused:", RateStore()
    made = []

    def build(name="t", *, hooks=None, shared_store=True, window_s=60, **limits) -> TeacherLimiter:
        limits.setdefault("max_queue_wait_s", 0.0)
        teacher = TeacherConfig(name=name, provider="hf", model="m", limits=limits)
        own = store if shared_store else RateStore(url, prefix)
        limiter = TeacherLimiter(
            teacher, own, redis_url=url, prefix=prefix, hooks=hooks, window_s=window_s
        )
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        await limiter.aclose()


async def admit_once(limiter: TeacherLimiter, cost: Cost = ONE, deadline_s: float = 30.0):
    async with limiter.admit(cost, time.monotonic() + deadline_s):
        pass


async def test_requests_per_window_then_resource_exhausted(make_limiter):
    await clear_of_window_edge()
    limiter = make_limiter(requests_per_minute=3)
    for _ in range(3):
        await admit_once(limiter)
    with pytest.raises(GatewayError) as info:
        await admit_once(limiter)
    err = info.value
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.requests_per_minute (3)" in err.message and "teacher 't'" in err.message
    assert err.retry_after is not None and 0 < err.retry_after <= 60.0  # within the window


async def test_over_the_limit_waits_for_budget_then_goes(make_limiter):
    # A 1-second window stands in for the minute; the calls start early in a window so that
    # the third must wait for the next one (at least 0.7 s).
    waits = []
    hooks = LimitHooks(on_wait=lambda limit, s: waits.append((limit, s)))
    limiter = make_limiter(requests_per_minute=2, max_queue_wait_s=5.0, hooks=hooks, window_s=1)
    while time.time() % 1.0 > 0.3:
        await asyncio.sleep(0.02)
    started = time.monotonic()
    for _ in range(3):
        await admit_once(limiter)
    elapsed = time.monotonic() - started
    assert 0.6 < elapsed < 2.5  # the third waited for the window to free some budget
    # At least the third waited (a window boundary falling between the calls can make the
    # sliding-window counter hold back the second too).
    assert waits and {w[0] for w in waits} == {"rate"}


async def test_waiting_never_passes_the_deadline(make_limiter):
    await clear_of_window_edge()
    limiter = make_limiter(requests_per_minute=1, max_queue_wait_s=30.0)
    await admit_once(limiter)
    started = time.monotonic()
    with pytest.raises(GatewayError):
        await admit_once(limiter, deadline_s=0.2)
    assert time.monotonic() - started < 0.5


async def test_input_token_budget(make_limiter):
    limiter = make_limiter(input_tokens_per_minute=100)
    await admit_once(limiter, Cost(1, 60))
    with pytest.raises(GatewayError) as info:
        await admit_once(limiter, Cost(1, 60))
    assert "limits.input_tokens_per_minute (100)" in info.value.message
    # A request larger than the whole budget can never pass: refused at once, as bad input.
    with pytest.raises(GatewayError) as info:
        limiter.check_cost(Cost(1, 150))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "input_tokens_per_minute" in info.value.message and "150" in info.value.message


async def test_output_tokens_are_charged_after_the_call(make_limiter):
    limiter = make_limiter(output_tokens_per_minute=50)
    await admit_once(limiter)  # nothing spent yet: admitted
    await limiter.charge_output(80)  # the call used more than the whole budget
    with pytest.raises(GatewayError) as info:
        await admit_once(limiter)
    assert "limits.output_tokens_per_minute (50)" in info.value.message


async def test_input_tokens_billed_beyond_the_estimate_are_charged(make_limiter):
    limiter = make_limiter(input_tokens_per_minute=100)
    await admit_once(limiter, Cost(1, 10))  # estimated 10 ...
    await limiter.charge_input(85)  # ... the backend billed 95
    with pytest.raises(GatewayError, match="input_tokens_per_minute"):
        await admit_once(limiter, Cost(1, 10))


async def test_concurrency_slots_wait_then_refuse(make_limiter):
    rejects = []
    hooks = LimitHooks(on_reject=rejects.append)
    limiter = make_limiter(max_concurrency=2, max_queue_wait_s=0.3, hooks=hooks)
    release = asyncio.Event()
    inside = 0

    async def hold():
        nonlocal inside
        async with limiter.admit(ONE, time.monotonic() + 10):
            inside += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    while inside < 2:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(GatewayError) as info:
        await admit_once(limiter)
    assert 0.25 < time.monotonic() - started < 1.0  # waited max_queue_wait_s, then refused
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrency" in info.value.message and info.value.retry_after
    assert rejects == ["concurrency"]

    waiter = asyncio.create_task(admit_once(limiter))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # queued behind the two holders
    release.set()
    await asyncio.gather(*holders)
    await asyncio.wait_for(waiter, 2)


async def test_replicas_share_one_budget_through_redis(redis_url, redis_prefix):
    # Two limiters with their own stores and clients, as two gateway processes would have.
    teacher = TeacherConfig(
        name="t",
        provider="hf",
        model="m",
        limits={"requests_per_minute": 2, "max_concurrency": 1, "max_queue_wait_s": 0},
    )
    a, b = (
        TeacherLimiter(teacher, RateStore(redis_url, redis_prefix), redis_url=redis_url,
                       prefix=redis_prefix)
        for _ in range(2)
    )  # fmt: skip
    await clear_of_window_edge()
    try:
        async with a.admit(ONE, time.monotonic() + 5):
            with pytest.raises(GatewayError, match="max_concurrency"):
                await admit_once(b)  # a holds the one slot
        await admit_once(b)
        for limiter in (a, b):
            with pytest.raises(GatewayError, match="requests_per_minute"):
                await admit_once(limiter)
    finally:
        await a.aclose()
        await b.aclose()


async def test_unreachable_redis_falls_back_to_local_limits(caplog):
    store = RateStore("redis://127.0.0.1:1/0", "omniopd-test-down:")
    teacher = TeacherConfig(
        name="t", provider="hf", model="m", limits={"requests_per_minute": 2, "max_queue_wait_s": 0}
    )
    await clear_of_window_edge()
    limiter = TeacherLimiter(teacher, store, window_s=60)
    await admit_once(limiter)
    await admit_once(limiter)
    with pytest.raises(GatewayError):
        await admit_once(limiter)  # still limited, in this process
    warnings = [r for r in caplog.records if "Redis unreachable for rate limits" in r.message]
    assert len(warnings) == 1  # logged once, not per request


def test_redis_urls_become_limits_storage_uris():
    assert redis_storage_uri("redis://h:6379/2") == "async+redis://h:6379/2"
    assert redis_storage_uri("rediss://h:6380") == "async+rediss://h:6380"
    with pytest.raises(ValueError, match="REDIS_URL"):
        redis_storage_uri("http://h")


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


def limited(url: str, **limits):
    return {"teachers": [anthropic_teacher(url, KEY_ENV, limits=limits)]}


async def test_gateway_refuses_over_rpm_without_calling_the_backend(backend):
    server, state = backend
    await clear_of_window_edge()
    async with serving(limited(server.url, requests_per_minute=2, max_queue_wait_s=0)) as gw:
        for i in range(2):
            await gw.stub.SampleChunks(request("claude", content=f"question {i}?"))
        err = await call_error(gw.stub.SampleChunks(request("claude", content="question 3?")))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "requests_per_minute" in err.details()
        assert retry_after_of(err) > 0
        assert len(state.requests) == 2
        assert (
            gw.metric(
                "omniopd_gateway_rate_limit_rejections_total", teacher="claude", limit="requests"
            )
            == 1
        )
        # A cached reply needs no budget: served even now.
        again = await gw.stub.SampleChunks(request("claude", content="question 0?"))
        assert again.cached


async def test_gateway_queues_for_a_concurrency_slot(backend):
    server, state = backend
    state.inject(Fault(delay=0.4), Fault(delay=0.4))
    config = limited(server.url, max_concurrency=1, max_queue_wait_s=5)
    async with serving(config) as gw:
        started = time.monotonic()
        replies = await asyncio.gather(
            *(gw.stub.SampleChunks(request("claude", content=f"q{i}?")) for i in range(2))
        )
        assert all(r.chunks for r in replies)
        assert time.monotonic() - started >= 0.8  # one after the other
        assert (
            gw.metric(
                "omniopd_gateway_rate_limit_waits_total", teacher="claude", limit="concurrency"
            )
            == 1
        )
