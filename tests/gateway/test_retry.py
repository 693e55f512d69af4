"""Retries: backoff with full jitter, retry-after honoured, nothing past the deadline.

The unit tests drive :func:`call_with_retries` with scripted backend outcomes; the end-to-end
tests go through a real gateway to the anthropic provider and a LOCAL STAND-IN of the Messages
API (``tests/gateway/standins``, not Anthropic's service) that injects 429 with retry-after,
5xx, delays and dropped connections.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest

from omniopd.gateway.errors import from_provider_error
from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.gateway.retry import (
    Backoff,
    RetriesExhausted,
    call_with_retries,
    pause_before,
    with_timeout,
)

from .gwtools import anthropic_teacher, call_error, request, retry_after_of, serving
from .standins import anthropic_api
from .standins.server import Fault

KEY_ENV = "STANDIN_RETRY_API_KEY"
KEY = "sk-ant-standin-retry-31c9"
FAST = Backoff(base_s=0.01, cap_s=0.05)


# -- pauses ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_cap():
    rng = random.Random(0)
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    err = ProviderError(ErrorKind.UNAVAILABLE, "503")
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        pauses = [pause_before(attempt, err, backoff, rng) for _ in range(400)]
        assert min(pauses) >= 0.0 and max(pauses) <= ceiling
        # Spread over the whole range, not pinned to the ceiling.
        assert min(pauses) < 0.1 * ceiling and max(pauses) > 0.9 * ceiling


def test_retry_after_is_honoured_with_a_little_jitter_on_top():
    rng = random.Random(1)
    err = ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=3.0)
    pauses = [pause_before(1, err, Backoff(), rng) for _ in range(200)]
    assert min(pauses) >= 3.0 and max(pauses) <= 3.3
    assert len(set(pauses)) > 100  # replicas do not come back in lockstep


# -- the loop -------------------------------------------------------------------------------------


class Script:
    """A backend that fails with the given errors, in order, then answers ``"ok"``."""

    def __init__(self, *errors: ProviderError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retryable_failures_are_retried_until_success():
    script = Script(
        ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=0.01),
        ProviderError(ErrorKind.UNAVAILABLE, "503"),
        ProviderError(ErrorKind.TIMEOUT, "slow"),
    )
    seen = []
    result = await call_with_retries(
        script,
        deadline=time.monotonic() + 10,
        max_retries=3,
        backoff=FAST,
        on_retry=lambda err, pause: seen.append(err.kind),
    )
    assert result == "ok" and script.calls == 4
    assert seen == [ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT]


@pytest.mark.parametrize("kind", [ErrorKind.BAD_REQUEST, ErrorKind.AUTH])
async def test_permanent_failures_are_not_retried(kind):
    script = Script(ProviderError(kind, "no"))
    with pytest.raises(RetriesExhausted) as info:
        await call_with_retries(script, deadline=time.monotonic() + 10, max_retries=5)
    assert script.calls == 1 and info.value.error.kind is kind and info.value.attempts == 1


async def test_retries_stop_at_max_retries():
    script = Script(*[ProviderError(ErrorKind.UNAVAILABLE, "503")] * 10)
    with pytest.raises(RetriesExhausted) as info:
        await call_with_retries(script, deadline=time.monotonic() + 10, max_retries=2, backoff=FAST)
    assert script.calls == 3 and info.value.attempts == 3


async def test_no_pause_runs_past_the_deadline():
    # The backend asks for 5 s; the request has 0.3 s left: fail now, do not sleep.
    script = Script(ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=5.0))
    started = time.monotonic()
    with pytest.raises(RetriesExhausted) as info:
        await call_with_retries(script, deadline=started + 0.3, max_retries=5)
    assert time.monotonic() - started < 0.25  # a pause would take the 0.3 s left, or more
    assert info.value.error.retry_after == 5.0
    err = from_provider_error("haiku", info.value.error, info.value.attempts)
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED and err.retry_after == 5.0


async def test_with_timeout_turns_a_slow_call_into_a_timeout():
    with pytest.raises(ProviderError) as info:
        await with_timeout(asyncio.sleep(1), 0.05)
    assert info.value.kind is ErrorKind.TIMEOUT and info.value.retryable
    with pytest.raises(ProviderError):
        await with_timeout(asyncio.sleep(0), 0.0)  # no time left: not even started


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (ErrorKind.RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ErrorKind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (ErrorKind.TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ErrorKind.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.AUTH, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_final_failures_map_to_grpc_codes(kind, code):
    err = from_provider_error("haiku", ProviderError(kind, "boom", status=503), attempts=3)
    assert err.code is code
    assert "teacher 'haiku'" in err.message and "after 3 attempts" in err.message


# -- end to end, through a gateway ----------------------------------------------------------------


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


def teacher(url: str, **fields):
    fields = {"max_retries": 3, "timeout_s": 2.0} | fields
    return {"teachers": [anthropic_teacher(url, KEY_ENV, **fields)]}


async def test_429_with_retry_after_is_waited_out_then_served(backend):
    server, state = backend
    state.inject(Fault(status=429, retry_after=0.3))
    async with serving(teacher(server.url)) as gw:
        started = time.monotonic()
        reply = await gw.stub.SampleChunks(request("claude", max_tokens=20))
        elapsed = time.monotonic() - started
        assert len(reply.chunks) == 1 and reply.chunks[0].text
        assert elapsed >= 0.3  # retry-after honoured
        assert (
            gw.metric("omniopd_gateway_retries_total", teacher="claude", kind="rate_limited") == 1
        )
        assert len(state.requests) == 2


async def test_5xx_timeouts_and_dropped_connections_are_retried(backend):
    server, state = backend
    # The delayed attempt must outlast the timeout, and every other attempt answer well within
    # it even on a loaded machine (0.5 s was too short beside `make test`'s toy build).
    state.inject(Fault(status=503), Fault(drop=True), Fault(delay=5.0), Fault(status=529))
    async with serving(teacher(server.url, timeout_s=2.0, max_retries=4), backoff=FAST) as gw:
        reply = await gw.stub.SampleChunks(request("claude", max_tokens=20))
        assert reply.chunks[0].text
        retries = {
            kind: gw.metric("omniopd_gateway_retries_total", teacher="claude", kind=kind)
            for kind in ("unavailable", "timeout")
        }
        assert retries == {"unavailable": 3, "timeout": 1}
        assert len(state.requests) == 5


async def test_exhausted_rate_limit_fails_alone_with_retry_info(backend):
    server, state = backend
    state.inject(*[Fault(status=429, retry_after=0.05)] * 3)
    async with serving(teacher(server.url, max_retries=2)) as gw:
        err = await call_error(gw.stub.SampleChunks(request("claude", max_tokens=20)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "after 3 attempts" in err.details()
        assert retry_after_of(err) == pytest.approx(0.05)
        # The next request is served: one bad request never takes the teacher down.
        reply = await gw.stub.SampleChunks(request("claude", content="Another question?"))
        assert reply.chunks[0].text


async def test_exhausted_5xx_is_unavailable(backend):
    server, state = backend
    state.inject(*[Fault(status=500)] * 3)
    async with serving(teacher(server.url, max_retries=2), backoff=FAST) as gw:
        err = await call_error(gw.stub.SampleChunks(request("claude")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "HTTP 500" in err.details() and "after 3 attempts" in err.details()


async def test_the_clients_deadline_bounds_everything(backend):
    server, state = backend
    state.inject(*[Fault(delay=3.0)] * 3)
    async with serving(teacher(server.url, timeout_s=10.0)) as gw:
        started = time.monotonic()
        err = await call_error(gw.stub.SampleChunks(request("claude"), timeout=0.5))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.7)
        assert len(state.requests) == 1  # no attempt started after the deadline
