"""``OmniOPDReward`` against a real gateway (toy teacher) and a real verifier, called as TRL's
``GRPOTrainer`` calls a reward function (keyword arguments, extra columns, ``log_metric``)."""

from __future__ import annotations

import math
import re

import httpx
import pytest

from omniopd.answers import check_answer
from omniopd.integrations.trl import OmniOPDReward
from omniopd.verifier.client import VerifierClient

PROMPTS = ["Q: 37+48*2=?", "Q: 12+31*4=?"]
RIGHT = {
    "Q: 37+48*2=?": "48*2=96. 37+96=133. #### 133",
    "Q: 12+31*4=?": "31*4=124. 12+124=136. #### 136",
}


def as_chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def gateway_requests(stack, teacher: str) -> float:
    """``omniopd_gateway_requests_total`` for ``teacher``, summed over codes."""
    text = httpx.get(stack.gateway_metrics, timeout=10).text
    pattern = rf'^omniopd_gateway_requests_total\{{[^}}]*teacher="{teacher}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.M))


def make_reward(stack, **kw) -> OmniOPDReward:
    args = dict(gateway=stack.gateway, teacher="toy", verifier=stack.verifier, teacher_samples=4)
    return OmniOPDReward(**(args | kw))


def trl_call(reward, prompts, completions, **extra):
    """The way GRPOTrainer calls it: keywords, its own extras, the dataset's columns."""
    logged: dict[str, list[float]] = {}
    out = reward(
        prompts=prompts,
        completions=completions,
        completion_ids=[[0] for _ in completions],
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        **extra,
    )
    return out, logged


def test_each_completion_is_scored_against_its_prompts_teacher_answers(stack):
    prompts = [as_chat(p) for p in PROMPTS for _ in range(3)]
    completions = []
    for p in PROMPTS:
        completions += [
            [{"role": "assistant", "content": RIGHT[p]}],
            [{"role": "assistant", "content": "7*7=49. #### 49"}],
            [{"role": "assistant", "content": "hello there"}],
        ]
    with make_reward(stack) as reward:
        rewards, logged = trl_call(reward, prompts, completions, answer=["x"] * len(prompts))
        answers = reward.teacher_answers(prompts)  # from its cache now

    assert len(rewards) == 6 and all(r is not None and 0 < r < 1 for r in rewards)
    # The trained toy teacher mostly answers right, so the right answer agrees most.
    for g in range(2):
        right, wrong, noise = rewards[3 * g : 3 * g + 3]
        assert right > wrong and right > noise, rewards
    # Exactly the verifier's Beta-Binomial reward, one group per prompt, K = 3 drafts each.
    assert len(answers) == 2 and all(len(a) == 4 for a in answers.values())
    teacher_right = [
        check_answer(t, RIGHT[p])
        for p, ts in zip(PROMPTS, answers.values(), strict=True)
        for t in ts
    ]
    assert sum(teacher_right) >= 4, answers
    with VerifierClient(stack.verifier) as verifier:
        groups = [
            {"drafts": [c[0]["content"] for c in completions[3 * g : 3 * g + 3]], "teacher": t}
            for g, t in enumerate(answers.values())
        ]
        expected = [
            r for group in verifier.score(groups, reward="prob").groups for r in group.reward
        ]
    assert rewards == pytest.approx(expected, abs=1e-5)
    assert logged["omniopd/teacher_failures"] == [0]
    assert logged["omniopd/unscored"] == [0]


def test_teacher_answers_are_fetched_once_per_prompt(stack):
    prompts = [p for p in PROMPTS for _ in range(4)]  # plain-text prompts: one user turn
    completions = ["48*2=96. #### 96"] * len(prompts)
    with make_reward(stack, teacher_samples=3) as reward:
        before = gateway_requests(stack, "toy")
        first, _ = trl_call(reward, prompts, completions)
        after_first = gateway_requests(stack, "toy")
        second, logged = trl_call(reward, list(reversed(prompts)), completions)
        after_second = gateway_requests(stack, "toy")
        assert reward.stats.teacher_requests == 2 and reward.stats.teacher_cache_hits == 2

    assert after_first - before == 2, "one gateway request per distinct prompt"
    assert after_second == after_first, "the second call was served from the cache"
    assert logged["omniopd/teacher_cache_hit_rate"] == [1.0]
    assert second == pytest.approx(list(reversed(first)), abs=1e-5)


def test_the_cache_is_bounded(stack):
    with make_reward(stack, teacher_samples=2, cache_size=1) as reward:
        trl_call(reward, [PROMPTS[0], PROMPTS[1]], ["a", "b"])
        trl_call(reward, [PROMPTS[0]], ["a"])  # evicted by the second prompt: fetched again
        assert reward.stats.teacher_requests == 3


def test_a_failed_teacher_leaves_its_completions_unscored_not_zero(stack):
    with make_reward(stack, teacher="dead", max_retries=0, timeout_s=10) as reward:
        rewards, logged = trl_call(reward, [PROMPTS[0]] * 2, ["x", "y"])
        assert reward.stats.teacher_failures == 1
    assert rewards == [None, None]
    assert logged["omniopd/teacher_failures"] == [1]
    assert logged["omniopd/unscored"] == [2]


def test_a_failed_verifier_leaves_the_batch_unscored(stack, closed_port):
    verifier = f"http://127.0.0.1:{closed_port}"
    with make_reward(stack, verifier=verifier, max_retries=0, teacher_samples=2) as reward:
        rewards, logged = trl_call(reward, [PROMPTS[0]] * 2, ["x", "y"])
        assert reward.stats.verifier_failures == 1
    assert rewards == [None, None]
    assert logged["omniopd/verifier_failures"] == [1]


def test_logratio_reward_and_verifier_parameters_pass_through(stack):
    with make_reward(stack, reward="logratio", metric="lexical", alpha=1.0) as reward:
        rewards, _ = trl_call(reward, [PROMPTS[0]] * 2, [RIGHT[PROMPTS[0]], "zzz"])
    assert all(math.isfinite(r) for r in rewards) and rewards[0] > rewards[1]


def test_bad_arguments_fail_at_once(stack):
    with pytest.raises(ValueError, match="teacher_samples"):
        make_reward(stack, teacher_samples=0)
    with make_reward(stack) as reward, pytest.raises(ValueError, match="2 prompts but 1"):
        reward(prompts=PROMPTS, completions=["x"])
