"""The one retry policy of every client of the project's services (bottom layer: no part).

What is retried, everywhere: a connection that failed or dropped, and the answers that mean
"later" rather than "no":

- gRPC (the gateway): ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` (a limit; the gateway says how
  long to wait in a ``google.rpc.RetryInfo``), ``DEADLINE_EXCEEDED``, ``ABORTED``;
- HTTP (the verifier): 429, 500, 502, 503, 504 (``Retry-After`` honoured).

How long to wait before retry ``attempt`` (0 for the first): the server's hint when it gave
one, else ``backoff_s · 2^attempt`` with full jitter (uniform from 0; the AWS Architecture
Blog's *Exponential Backoff and Jitter*), never more than ``max_delay_s``. The request/response
loops run on tenacity (:func:`retrying`, :func:`async_retrying`); the trainer's teacher stream,
which re-sends single requests on a live stream, computes its pauses with
:meth:`RetryPolicy.delay`. The gateway's own retries of its backends keep their deadline-aware
loop (``omniopd.gateway.retry``) with the same formula.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import tenacity

# By name, so that this module needs no grpc import (``grpc.StatusCode.X.name``).
RETRYABLE_GRPC_CODES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED"}
)
RETRYABLE_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})


def grpc_retryable(code: Any) -> bool:
    """Whether a ``grpc.StatusCode`` is worth another try."""
    return code is not None and getattr(code, "name", None) in RETRYABLE_GRPC_CODES


def jittered(attempt: int, base_s: float, cap_s: float, rng: Any = random) -> float:
    """Full jitter: uniform in ``[0, min(cap_s, base_s · 2^attempt)]``."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0**attempt))


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, hint_s: float | None = None) -> float:
        """Seconds before retry ``attempt`` (0-based): the server's hint when it gave one,
        else exponential backoff with full jitter; at most ``max_delay_s``."""
        if hint_s is not None:
            return min(self.max_delay_s, max(0.0, hint_s))
        return jittered(attempt, self.backoff_s, self.max_delay_s)


def retry_after_s(header: str | None) -> float | None:
    """An HTTP ``Retry-After`` value in seconds (given as seconds or as an HTTP date)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# Called before each pause: the error, the retry's number (1 for the first), the pause in s.
OnRetry = Callable[[BaseException, int, float], None]


def _options(
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    hint: Callable[[BaseException], float | None],
    on_retry: OnRetry | None,
) -> dict[str, Any]:
    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        err = state.outcome.exception()
        return policy.delay(state.attempt_number - 1, hint(err) if err else None)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            err = state.outcome.exception()
            assert err is not None and state.next_action is not None
            on_retry(err, state.attempt_number, state.next_action.sleep)

    return {
        "stop": tenacity.stop_after_attempt(policy.max_retries + 1),
        "retry": tenacity.retry_if_exception(retryable),
        "wait": wait,
        "before_sleep": before_sleep,
        "reraise": True,  # the last error itself, not tenacity's RetryError
    }


def retrying(
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    hint: Callable[[BaseException], float | None] = lambda err: None,
    on_retry: OnRetry | None = None,
) -> tenacity.Retrying:
    """``for attempt in retrying(...): with attempt: call()`` under ``policy``."""
    return tenacity.Retrying(**_options(policy, retryable, hint, on_retry))


def async_retrying(
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    hint: Callable[[BaseException], float | None] = lambda err: None,
    on_retry: OnRetry | None = None,
) -> tenacity.AsyncRetrying:
    """``async for attempt in async_retrying(...): with attempt: await call()``."""
    return tenacity.AsyncRetrying(**_options(policy, retryable, hint, on_retry))
