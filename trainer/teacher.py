"""Step 4 of docs/method.md: M teacher continuations per fork, all forks of a step on one stream.

Every fork's request goes out at once on one ``StreamChunks`` call of the gateway's client
(``omniopd.gateway.client``); replies come back in completion order and are yielded as they
arrive, so step 5 can score the first forks while the teacher still writes the last. Text
only: the prompt as a user message, the student's response so far as ``partial_answer``, and
a sampling seed per fork (:func:`request_seed`). The client retries what is transient (the
project's one policy, ``omniopd/retry.py``); here each retry and each fork that failed for good
is counted in the step's metrics.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterator

from omniopd.gateway.client import AsyncGatewayClient, Retry, TeacherReply, TeacherRequest
from omniopd.trainer.retry import Counters

__all__ = [
    "CharsPerToken",
    "TeacherReply",
    "TeacherRequest",
    "request_seed",
    "stream_teacher",
    "teacher_max_tokens",
]

log = logging.getLogger("omniopd.trainer")


def request_seed(run_seed: int, step: int, fork: int, rank: int = 0) -> int:
    """The teacher's sampling seed for fork ``fork`` of step ``step`` on rank ``rank``.

    A hash of the four, in [0, 2^31): every run with the same ``seed`` asks the same fork of
    the same step with the same seed, whether the request is fresh, retried, redone after a
    resume or answered from the gateway's cache, so a teacher that honours seeds (``hf``, vLLM)
    returns the same samples; other forks and steps get other seeds, hence other samples.
    """
    key = f"{run_seed}/{step}/{rank}/{fork}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 2**31


def teacher_max_tokens(
    chunk_tokens: int, student_chars_per_token: float, teacher_chars_per_token: float, limit: int
) -> int:
    """Teacher tokens that cover about as much text as a draft of ``chunk_tokens`` student
    tokens: L · (student chars/token) / (teacher chars/token), in [1, limit]."""
    wanted = math.ceil(chunk_tokens * student_chars_per_token / teacher_chars_per_token)
    return max(1, min(limit, wanted))


class CharsPerToken:
    """A running ratio of characters to tokens, starting from a prior worth ``weight`` tokens."""

    def __init__(self, prior: float, weight: int = 16) -> None:
        self.chars = prior * weight
        self.tokens = float(weight)

    def update(self, chars: int, tokens: int) -> None:
        self.chars += chars
        self.tokens += tokens

    @property
    def value(self) -> float:
        return self.chars / self.tokens


async def stream_teacher(
    gateway: AsyncGatewayClient,
    requests: list[TeacherRequest],
    *,
    teacher: str,
    temperature: float,
    counters: Counters,
) -> AsyncIterator[TeacherReply]:
    """The gateway client's stream of one step's requests, each retry counted in
    ``counters.teacher_retries`` and each fork that failed for good in ``teacher_errors``."""

    def retried(retry: Retry) -> None:
        counters.teacher_retries += 1
        of = gateway.policy.max_retries
        if retry.what == "stream":  # a stream reopened is worth a warning; a request re-sent
            log.warning(  # on a live stream is routine
                "teacher stream failed (%s): reopening it, retry %d of %d in %.2f s",
                retry.reason,
                retry.attempt,
                of,
                retry.pause_s,
            )
        else:
            log.debug(
                "teacher request for fork %s failed (%s): retry %d of %d in %.2f s",
                retry.request_id,
                retry.reason,
                retry.attempt,
                of,
                retry.pause_s,
            )

    async for reply in gateway.stream(
        requests, teacher=teacher, temperature=temperature, on_retry=retried
    ):
        if not reply.ok:
            counters.teacher_errors.append(reply.error or "")
        yield reply
