"""Step 5 of docs/method.md: the verifier scores each fork's drafts against its teacher chunks.

Scoring starts as soon as the first teacher replies arrive: ready groups wait in a queue, and
whenever fewer than ``max_in_flight`` verifier calls are running, one call takes every group
waiting. So groups of a step travel together in a few calls, and the verifier works while the
teacher is still writing. A failed call (after retries) fails its forks, which are counted and
left out of the loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from omniopd.gateway.client import TeacherReply
from omniopd.retry import RetryPolicy
from omniopd.trainer.retry import Counters
from omniopd.verifier.client import AsyncVerifierClient, VerifierHTTPError

log = logging.getLogger("omniopd.trainer")


@dataclass(frozen=True)
class ScoreSettings:
    metric: str
    prior: str
    alpha: float
    reward: str


@dataclass
class ForkScores:
    """What steps 4 and 5 learned about the forks of a step, by fork index."""

    rewards: dict[int, list[float]] = field(default_factory=dict)
    teacher_agreement: dict[int, list[float]] = field(default_factory=dict)
    similarity: dict[int, list[list[float]]] = field(default_factory=dict)  # K x N, φ
    # With ``teacher_rows``: each fork's N continuations, and their N x N similarities (the
    # rows after the K drafts' in ``similarity``).
    continuations: dict[int, list[str]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    teacher_tokens: int = 0
    teacher_chars: int = 0
    teacher_cached: int = 0
    time_teacher_s: float = 0.0
    time_verifier_s: float = 0.0


def service_metrics(scores: ForkScores, counters: Counters) -> dict[str, float]:
    """A step's teacher and verifier figures (steps 4 and 5), the same for both objectives."""
    return {
        "teacher_tokens": scores.teacher_tokens,
        "teacher_cached": scores.teacher_cached,
        "teacher_retries": counters.teacher_retries,
        "verifier_retries": counters.verifier_retries,
        "verifier_calls": counters.verifier_calls,
        "time_teacher_s": scores.time_teacher_s,
        "time_verifier_s": scores.time_verifier_s,
    }


async def score_as_replies_arrive(
    replies: AsyncIterator[TeacherReply],
    drafts: dict[int, list[str]],
    verifier: AsyncVerifierClient,
    settings: ScoreSettings,
    *,
    policy: RetryPolicy,
    counters: Counters,
    max_in_flight: int = 2,
    prior_means: dict[int, list[float]] | None = None,
    teacher_rows: bool = False,
) -> ForkScores:
    """Consume teacher replies; score ready groups in batches while more replies arrive.

    ``drafts`` maps each fork sent to the teacher to its K draft texts; ``prior_means`` (prior
    ``likelihood``) to the student's π̄ of each draft. ``teacher_rows``: the N continuations
    are also sent as drafts after the K, so that ``similarity`` gains their N x N agreement
    with each other (same call, same metric); they carry a prior mean of 1, and what the
    verifier derives for them beyond the similarities is not used.
    """
    out = ForkScores()

    def retried(err: BaseException, attempt: int, pause_s: float) -> None:
        counters.verifier_retries += 1
        log.warning(
            "verifier call failed (%s: %s): retry %d of %d in %.2f s",
            type(err).__name__,
            err,
            attempt,
            policy.max_retries,
            pause_s,
        )

    client = verifier.with_options(policy=policy, on_retry=retried)
    ready: asyncio.Queue[TeacherReply | None] = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    start = time.perf_counter()

    async def collect() -> None:
        try:
            async for reply in replies:
                if reply.ok:
                    out.teacher_tokens += reply.output_tokens
                    out.teacher_chars += sum(len(c) for c in reply.chunks)
                    out.teacher_cached += int(reply.cached)
                    await ready.put(reply)
                else:
                    out.failed[reply.fork] = f"teacher: {reply.error}"
        finally:
            out.time_teacher_s = time.perf_counter() - start
            await ready.put(None)

    def group(r: TeacherReply) -> dict:
        extra = list(r.chunks) if teacher_rows else []
        out_group = {"id": str(r.fork), "drafts": drafts[r.fork] + extra, "teacher": r.chunks}
        if prior_means:
            out_group["prior_mean"] = prior_means[r.fork] + [1.0] * len(extra)
        return out_group

    async def score(batch: list[TeacherReply]) -> None:
        groups = [group(r) for r in batch]
        t0 = time.perf_counter()
        try:
            counters.verifier_calls += 1
            response = await client.score(
                groups,
                metric=settings.metric,
                prior=settings.prior,
                alpha=settings.alpha,
                reward=settings.reward,
            )
        except (httpx.HTTPError, VerifierHTTPError) as err:
            counters.verifier_errors.append(str(err))
            for r in batch:
                out.failed[r.fork] = f"verifier: {err}"
        else:
            for r in batch if teacher_rows else ():
                out.continuations[r.fork] = list(r.chunks)
            for g in response.groups:
                out.rewards[int(g.id)] = list(g.reward)
                out.teacher_agreement[int(g.id)] = list(g.teacher_agreement)
                out.similarity[int(g.id)] = g.similarity
        finally:
            out.time_verifier_s += time.perf_counter() - t0
            slots.release()

    collector = asyncio.create_task(collect())
    calls: list[asyncio.Task] = []
    finished = False
    try:
        while not finished:
            first = await ready.get()
            await slots.acquire()  # while every slot is busy, more groups pile up in the queue
            batch = [first]
            while not ready.empty():
                batch.append(ready.get_nowait())
            finished = None in batch
            batch = [r for r in batch if r is not None]
            if batch:
                calls.append(asyncio.create_task(score(batch)))
            else:
                slots.release()
        await asyncio.gather(*calls)
        await collector  # re-raises a bug in the teacher stream rather than hiding it
    finally:
        collector.cancel()
        for task in calls:
            task.cancel()
    return out
