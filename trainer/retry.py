"""Retries of service calls during a run: exponential backoff with full jitter, counted.

At start a service that cannot be reached fails the run at once (see ``services.py``); once
training, a transient failure (connection lost, timeout, 429/503, gRPC UNAVAILABLE) is retried
so that a restarting gateway or verifier costs a few seconds, not the run. Every retry is
counted in the step's metrics (``teacher_retries``, ``verifier_retries``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, hint_s: float | None = None) -> float:
        """Seconds before retry ``attempt`` (0-based): the server's hint when it gave one, else
        ``backoff_s · 2^attempt`` with full jitter; at most ``max_delay_s``."""
        if hint_s is not None:
            return min(self.max_delay_s, max(0.0, hint_s))
        return min(self.max_delay_s, random.uniform(0, self.backoff_s * 2**attempt))


@dataclass
class Counters:
    """Per-step counts of what the services did, reset by the loop each step."""

    teacher_retries: int = 0
    verifier_retries: int = 0
    verifier_calls: int = 0
    teacher_errors: list[str] = field(default_factory=list)
    verifier_errors: list[str] = field(default_factory=list)
