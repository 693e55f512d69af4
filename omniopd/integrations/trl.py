"""OmniOPD's response-level reward for TRL's ``GRPOTrainer``, online: teacher and verifier live.

    from omniopd.integrations.trl import OmniOPDReward

    reward = OmniOPDReward(gateway="127.0.0.1:50051", teacher="haiku",
                           verifier="http://127.0.0.1:8100", teacher_samples=8)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], args=GRPOConfig(...), ...)

For each batch TRL hands the reward its ``prompts`` and ``completions`` (``num_generations`` per
prompt). The reward

1. asks the teacher gateway for ``teacher_samples`` full answers to every prompt of the batch it
   has not seen before (all distinct prompts in flight at once; a prompt's answers are then kept
   in an LRU of ``cache_size`` prompts, so later epochs and ``num_iterations`` cost no teacher
   call);
2. sends all completions to the verifier in one ``POST /v1/score``: the completions of one prompt
   form one group (the drafts, compared with each other for the student prior), scored against
   that prompt's teacher answers; each completion gets its group's ``reward`` (posterior teacher
   agreement ``p_T`` with ``reward="prob"``, ``log p_T - log p_S`` with ``"logratio"``). GRPO
   centres and scales rewards per group itself, so the verifier's advantage is not used.

This is the chunk-level score of docs/method.md applied to whole responses: no forks, one "chunk" per
completion. Grouping and scoring are :func:`omniopd.verifier.rewards.score_by_group`.

A prompt whose teacher call failed (after retries), or a batch whose verifier call failed, gets
``None`` for its completions: TRL leaves such rows out of the group baseline and gives them zero
advantage, so a failure is skipped, never scored as a zero reward. Failures and cache hits are
counted in :attr:`OmniOPDReward.stats` and reported through TRL's ``log_metric`` as
``omniopd/...``. Needs ``grpcio`` and ``httpx`` only (no TRL import: any trainer that calls
``reward(prompts=..., completions=...)`` can use it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from omniopd.gateway.client import GatewayClient, Retry, sample_request
from omniopd.log import register_secret
from omniopd.proto.v1 import gateway_pb2
from omniopd.retry import RetryPolicy
from omniopd.verifier.client import VerifierClient, VerifierHTTPError
from omniopd.verifier.rewards import completion_text, score_by_group

__all__ = ["OmniOPDReward", "RewardStats", "prompt_messages"]

log = logging.getLogger("omniopd.integrations.trl")

# A TRL prompt: plain text, or (conversational datasets) a list of {"role", "content"} messages.
Prompt = str | Sequence[Mapping[str, Any]]


def _content_text(content: Any) -> str:
    """Message content as text; multimodal content blocks keep their ``text`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            str(block.get("text", "")) for block in content if isinstance(block, Mapping)
        )
    return str(content)


def prompt_messages(prompt: Prompt) -> list[gateway_pb2.Message]:
    """The gateway's conversation for a TRL prompt: plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [gateway_pb2.Message(role="user", content=prompt)]
    return [
        gateway_pb2.Message(role=str(m["role"]), content=_content_text(m["content"]))
        for m in prompt
    ]


def _prompt_key(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m.role, m.content] for m in prompt_messages(prompt)])


@dataclass
class RewardStats:
    """Running counts since the reward was made (``calls`` = reward-function calls)."""

    calls: int = 0
    completions: int = 0
    prompts: int = 0  # distinct prompts seen, summed over calls
    teacher_requests: int = 0  # prompts sent to the gateway (cache misses), retries excluded
    teacher_cache_hits: int = 0
    teacher_retries: int = 0
    teacher_failures: int = 0  # prompts whose teacher answers could not be had
    verifier_failures: int = 0  # calls whose verifier request failed
    unscored: int = 0  # completions that got None


class OmniOPDReward:
    """A TRL reward function (``reward_funcs=[OmniOPDReward(...)]``); see the module docstring.

    ``verifier`` is a base URL or a :class:`VerifierClient`. ``metric``, ``prior``, ``alpha``,
    ``posterior`` and ``hybrid_weight`` left at ``None`` take the verifier's defaults.
    ``max_tokens`` (default: the teacher's cap) bounds each teacher answer. Bearer tokens default
    to ``OMNIOPD_GATEWAY_TOKEN`` and ``OMNIOPD_VERIFIER_TOKEN``, as for ``omniopd-train``.
    """

    __name__ = "omniopd"  # TRL names the reward's metrics after it: rewards/omniopd/mean

    def __init__(
        self,
        *,
        gateway: str,
        teacher: str,
        verifier: str | VerifierClient,
        teacher_samples: int = 8,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        reward: str = "prob",
        metric: str | None = None,
        prior: str | None = None,
        alpha: float | None = None,
        posterior: str | None = None,
        hybrid_weight: float | None = None,
        cache_size: int = 4096,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        gateway_token: str | None = None,
        verifier_token: str | None = None,
    ) -> None:
        if teacher_samples < 1:
            raise ValueError(f"teacher_samples must be at least 1, got {teacher_samples}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be at least 0, got {cache_size}")
        self.teacher = teacher
        self.teacher_samples = teacher_samples
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.policy = RetryPolicy(max_retries=max_retries)
        self.cache_size = cache_size
        self.params = {
            k: v
            for k, v in dict(
                reward=reward,
                metric=metric,
                prior=prior,
                alpha=alpha,
                posterior=posterior,
                hybrid_weight=hybrid_weight,
            ).items()
            if v is not None
        }
        self.stats = RewardStats()

        token = gateway_token or os.environ.get("OMNIOPD_GATEWAY_TOKEN") or None
        register_secret(token)
        self.gateway = GatewayClient(gateway, token=token, policy=self.policy, timeout_s=timeout_s)
        if isinstance(verifier, VerifierClient):
            self.verifier, self._owns_verifier = verifier, False
        else:
            vtoken = verifier_token or os.environ.get("OMNIOPD_VERIFIER_TOKEN") or None
            register_secret(vtoken)
            self.verifier = VerifierClient(
                verifier, token=vtoken, timeout=timeout_s, policy=self.policy
            )
            self._owns_verifier = True
        self._cache: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    # -- TRL's entry point ------------------------------------------------------------------

    def __call__(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str | Sequence[Mapping[str, Any]]],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """One reward per completion (``None`` where the teacher or the verifier failed)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        before = RewardStats(**vars(self.stats))
        keys = [_prompt_key(p) for p in prompts]
        answers = self.teacher_answers(prompts)
        rows = [i for i, key in enumerate(keys) if answers.get(key)]
        rewards: list[float | None] = [None] * len(prompts)
        if rows:
            try:
                scored = score_by_group(
                    self.verifier,
                    [keys[i] for i in rows],
                    [completion_text(completions[i]) for i in rows],
                    [answers[keys[i]] for i in rows],
                    **self.params,
                )
            except (VerifierHTTPError, httpx.HTTPError) as err:
                self.stats.verifier_failures += 1
                log.warning(
                    "verifier call failed; %d completions left unscored: %s", len(rows), err
                )
            else:
                for i, value in zip(rows, scored, strict=True):
                    rewards[i] = value
        self.stats.calls += 1
        self.stats.completions += len(prompts)
        self.stats.unscored += sum(r is None for r in rewards)
        if log_metric is not None:
            self._report(before, log_metric)
        return rewards

    def _report(self, before: RewardStats, log_metric: Callable[[str, float], None]) -> None:
        now = self.stats
        prompts = now.prompts - before.prompts
        log_metric(
            "omniopd/teacher_cache_hit_rate",
            (now.teacher_cache_hits - before.teacher_cache_hits) / max(1, prompts),
        )
        log_metric("omniopd/teacher_failures", now.teacher_failures - before.teacher_failures)
        log_metric("omniopd/teacher_retries", now.teacher_retries - before.teacher_retries)
        log_metric("omniopd/verifier_failures", now.verifier_failures - before.verifier_failures)
        log_metric("omniopd/unscored", now.unscored - before.unscored)

    # -- teacher answers, cached per prompt -------------------------------------------------

    def teacher_answers(self, prompts: Sequence[Prompt]) -> dict[str, list[str]]:
        """The teacher's answers for each distinct prompt (by key), from the cache or the
        gateway; prompts whose requests failed are absent."""
        distinct: dict[str, Prompt] = {}
        for prompt in prompts:
            distinct.setdefault(_prompt_key(prompt), prompt)
        self.stats.prompts += len(distinct)
        found: dict[str, list[str]] = {}
        with self._lock:
            for key in distinct:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    found[key] = self._cache[key]
        self.stats.teacher_cache_hits += len(found)
        missing = {key: p for key, p in distinct.items() if key not in found}
        if missing:
            fetched = self._fetch(missing)
            with self._lock:
                for key, chunks in fetched.items():
                    found[key] = chunks
                    if self.cache_size:
                        self._cache[key] = chunks
                        self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return found

    def _fetch(self, prompts: Mapping[str, Prompt]) -> dict[str, list[str]]:
        """Every prompt's request in flight at once on the gateway client, which retries
        what is transient (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED) after
        the gateway's ``RetryInfo`` delay or a jittered backoff, up to ``max_retries`` times."""
        self.stats.teacher_requests += len(prompts)

        def retried(retry: Retry) -> None:
            self.stats.teacher_retries += 1

        requests = {
            key: sample_request(
                self.teacher,
                prompt_messages(prompt),
                n=self.teacher_samples,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                request_id=str(i),
            )
            for i, (key, prompt) in enumerate(prompts.items())
        }
        out: dict[str, list[str]] = {}
        for key, reply in self.gateway.sample(requests, on_retry=retried).items():
            if isinstance(reply, gateway_pb2.SampleReply):
                out[key] = [chunk.text for chunk in reply.chunks]
                continue
            self.stats.teacher_failures += 1
            log.warning(
                "teacher %r: no answers for a prompt (%s: %s); its completions are left unscored",
                self.teacher,
                reply.code().name,  # type: ignore[attr-defined]
                reply.details(),  # type: ignore[attr-defined]
            )
        return out

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self.gateway.close()
        if self._owns_verifier:
            self.verifier.close()

    def __enter__(self) -> OmniOPDReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
