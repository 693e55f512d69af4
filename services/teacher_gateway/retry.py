"""Retries of failed backend calls: exponential backoff with full jitter, honouring retry-after.

Only :attr:`ProviderError.retryable` failures (429, 5xx, timeouts, dropped connections) are
tried again. The pause before attempt ``k`` (``k`` = 1, 2, ...) is the backend's ``retry-after``
when it sent one, plus up to 10% so replicas do not return in lockstep; otherwise it is drawn
uniformly from ``[0, min(cap, base * 2**(k-1))]`` ("full jitter", from the AWS Architecture
Blog's *Exponential Backoff and Jitter*; the formula of every client, ``omniopd/retry.py``).
Nothing waits past the request's deadline: when the next pause would end after it, the last
failure is returned at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.retry import jittered

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 0.2
    cap_s: float = 10.0
    retry_after_jitter: float = 0.1  # fraction added on top of a backend's retry-after


DEFAULT_BACKOFF = Backoff()


def pause_before(attempt: int, err: ProviderError, backoff: Backoff, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    if err.retry_after is not None and err.retry_after >= 0:
        return err.retry_after * (1.0 + rng.uniform(0.0, backoff.retry_after_jitter))
    return jittered(attempt - 1, backoff.base_s, backoff.cap_s, rng)


class RetriesExhausted(Exception):
    """The request failed for good; ``error`` is the last backend failure."""

    def __init__(self, error: ProviderError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


async def with_timeout(call: Awaitable[T], timeout: float) -> T:
    """Await ``call`` for at most ``timeout`` seconds; running out is :attr:`ErrorKind.TIMEOUT`."""
    if timeout <= 0:
        close = getattr(call, "close", None)
        if close is not None:
            close()  # a coroutine never awaited: close it quietly
        raise ProviderError(ErrorKind.TIMEOUT, "the request's deadline passed")
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise ProviderError(ErrorKind.TIMEOUT, f"no answer within {timeout:.3g} s") from None


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    max_retries: int,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_retry: Callable[[ProviderError, float], None] = lambda err, pause: None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Await ``call()`` until it succeeds, fails for good, or the deadline is too near to wait.

    ``call`` makes one attempt and bounds its own duration (see :func:`with_timeout`). Raises
    :class:`RetriesExhausted` carrying the last :class:`ProviderError`; other exceptions (a
    limit's ``RESOURCE_EXHAUSTED``, which has already waited) pass through untouched.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except ProviderError as err:
            if not err.retryable or attempt > max_retries:
                raise RetriesExhausted(err, attempt) from err
            pause = pause_before(attempt, err, backoff, rng)
            if clock() + pause >= deadline:
                raise RetriesExhausted(err, attempt) from err
            on_retry(err, pause)
            await asyncio.sleep(pause)
