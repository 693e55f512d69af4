"""The one retry policy (``omniopd/retry.py``): what is retried, how long it waits, and the
tenacity loops every client runs on. Real sleeps, kept to milliseconds."""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import formatdate

import grpc
import pytest

from omniopd.retry import (
    RETRYABLE_HTTP_STATUSES,
    RetryPolicy,
    async_retrying,
    grpc_retryable,
    jittered,
    retry_after_s,
    retrying,
)

FAST = RetryPolicy(max_retries=3, backoff_s=0.001, max_delay_s=0.05)


def test_what_is_retried():
    assert {c.name for c in grpc.StatusCode if grpc_retryable(c)} == {
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
    }
    assert not grpc_retryable(None)
    assert {429, 500, 502, 503, 504} == RETRYABLE_HTTP_STATUSES


def test_retry_after_reads_seconds_or_a_date():
    assert retry_after_s("3") == 3.0
    assert retry_after_s("-1") == 0.0
    assert 0.5 < retry_after_s(formatdate(time.time() + 2, usegmt=True)) <= 2.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None


def test_delay_honours_the_hint_else_backs_off_with_full_jitter():
    policy = RetryPolicy(max_retries=4, backoff_s=0.5, max_delay_s=30.0)
    assert policy.delay(0, 3.0) == 3.0
    assert policy.delay(0, 3600.0) == 30.0  # capped
    assert policy.delay(2, -1.0) == 0.0
    for attempt in range(4):
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= w <= 0.5 * 2**attempt for w in waits)
        assert max(waits) > 0.25 * 2**attempt  # spread over the whole range, not a constant
    assert all(policy.delay(20) <= 30.0 for _ in range(50))
    rng = random.Random(0)
    assert jittered(3, 1.0, 5.0, rng) == random.Random(0).uniform(0, 5.0)


class Flaky(Exception):
    def __init__(self, hint: float | None = None) -> None:
        super().__init__("flaky")
        self.hint = hint


def test_the_loop_retries_until_success_counting_each_retry():
    calls, seen = [], []
    for attempt in retrying(
        FAST,
        retryable=lambda e: isinstance(e, Flaky),
        on_retry=lambda err, n, pause: seen.append((type(err).__name__, n, pause)),
    ):
        with attempt:
            calls.append(1)
            if len(calls) < 3:
                raise Flaky()
    assert len(calls) == 3
    assert [(name, n) for name, n, _ in seen] == [("Flaky", 1), ("Flaky", 2)]
    assert all(0 <= pause <= 0.05 for *_, pause in seen)


def test_the_loop_raises_the_last_error_after_max_retries_and_waits_the_hint():
    calls = []
    start = time.monotonic()
    with pytest.raises(Flaky):
        for attempt in retrying(
            FAST, retryable=lambda e: isinstance(e, Flaky), hint=lambda e: e.hint
        ):
            with attempt:
                calls.append(1)
                raise Flaky(hint=0.02)
    assert len(calls) == FAST.max_retries + 1
    assert time.monotonic() - start >= 0.02 * FAST.max_retries


def test_an_error_that_is_not_retryable_is_raised_at_once():
    calls = []
    with pytest.raises(ValueError):
        for attempt in retrying(FAST, retryable=lambda e: isinstance(e, Flaky)):
            with attempt:
                calls.append(1)
                raise ValueError("no")
    assert calls == [1]


def test_the_async_loop_is_the_same_policy():
    async def run() -> tuple[int, list[int]]:
        calls, retries = 0, []
        async for attempt in async_retrying(
            FAST,
            retryable=lambda e: isinstance(e, Flaky),
            on_retry=lambda err, n, pause: retries.append(n),
        ):
            with attempt:
                calls += 1
                await asyncio.sleep(0)
                if calls < 2:
                    raise Flaky()
        return calls, retries

    assert asyncio.run(run()) == (2, [1])
