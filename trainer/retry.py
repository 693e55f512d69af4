"""What the services did during a step: retries and failures, counted for the step's metrics.

At start a service that cannot be reached fails the run at once (see ``services.py``); once
training, a transient failure (connection lost, timeout, 429/503, gRPC UNAVAILABLE) is retried
by the clients under the project's one policy (``omniopd/retry.py``), so that a restarting
gateway or verifier costs a few seconds, not the run. Every retry is counted here
(``teacher_retries``, ``verifier_retries``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omniopd.retry import RetryPolicy

__all__ = ["Counters", "RetryPolicy"]


@dataclass
class Counters:
    """Per-step counts of what the services did, reset by the loop each step."""

    teacher_retries: int = 0
    verifier_retries: int = 0
    verifier_calls: int = 0
    teacher_errors: list[str] = field(default_factory=list)
    verifier_errors: list[str] = field(default_factory=list)
