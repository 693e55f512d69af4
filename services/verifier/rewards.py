"""Reward functions for other trainers, on the sync client (needs only httpx and pydantic).

    from omniopd.verifier.client import VerifierClient
    from omniopd.verifier.rewards import trl_reward

    reward = trl_reward(VerifierClient("http://127.0.0.1:8100"), teacher_column="teacher")
    # GRPOTrainer(..., reward_funcs=[reward])

Completions of the same prompt form one group (their drafts are compared with each other for the
student prior and scored against that prompt's teacher chunks); each completion gets its group's
``reward`` (not ``advantage``: GRPO-style trainers centre rewards per group themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from omniopd.verifier.client import VerifierClient


def score_by_group(
    verifier: VerifierClient,
    keys: Sequence[Hashable],
    drafts: Sequence[str],
    teachers: Sequence[Sequence[str]],
    **params: Any,
) -> list[float]:
    """One reward per row. Rows sharing a key are one group; its teacher chunks are those of the
    group's first row. ``params`` go to :meth:`VerifierClient.score` (``metric``, ``alpha``, ...).
    """
    if not len(keys) == len(drafts) == len(teachers):
        raise ValueError(
            f"keys, drafts and teachers must have one entry per row, got "
            f"{len(keys)}, {len(drafts)} and {len(teachers)}"
        )
    rows: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(key, []).append(i)
    order = list(rows.values())
    groups = [
        {"drafts": [drafts[i] for i in idx], "teacher": list(teachers[idx[0]])} for idx in order
    ]
    out = verifier.score(groups, **params)
    rewards = [0.0] * len(drafts)
    for idx, group in zip(order, out.groups, strict=True):
        for i, value in zip(idx, group.reward, strict=True):
            rewards[i] = value
    return rewards


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """TRL passes plain strings, or for conversational datasets a list of messages."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"])


def trl_reward(
    verifier: VerifierClient, teacher_column: str = "teacher", **params: Any
) -> Callable[..., list[float]]:
    """A reward function for TRL's ``GRPOTrainer``: ``reward(prompts, completions, **kwargs)``,
    with the teacher's chunks for each prompt in the dataset column ``teacher_column``."""

    def omniopd_teacher_agreement(prompts, completions, **kwargs) -> list[float]:
        if teacher_column not in kwargs:
            raise KeyError(f"the dataset has no column {teacher_column!r} of teacher chunks")
        return score_by_group(
            verifier,
            [str(p) for p in prompts],
            [completion_text(c) for c in completions],
            kwargs[teacher_column],
            **params,
        )

    return omniopd_teacher_agreement


def verl_compute_score(verifier: VerifierClient, **params: Any) -> Callable[..., list[float]]:
    """A batch ``compute_score`` for verl's batch reward manager: rollouts are grouped by
    ``extra_info["index"]`` and scored against ``extra_info["teacher"]``."""

    def compute_score(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
        return score_by_group(
            verifier,
            [info["index"] for info in extra_infos],
            list(solution_strs),
            [info["teacher"] for info in extra_infos],
            **params,
        )

    return compute_score
