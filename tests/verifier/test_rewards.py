"""Reward functions for TRL and verl, against the real server: grouping by prompt, row order,
plain and conversational completions."""

from __future__ import annotations

import pytest

from omniopd.verifier.client import VerifierClient
from omniopd.verifier.rewards import score_by_group, trl_reward, verl_compute_score

TEACHER_A = ["x = 4", "so x is 4"]
TEACHER_B = ["the capital of France is Paris", "Paris"]


@pytest.fixture(scope="module")
def client(verifier):
    with VerifierClient(verifier.url) as c:
        yield c


def test_rows_are_grouped_by_key_and_answered_in_row_order(client):
    # Interleaved rows of two prompts, as a shuffled batch would bring them.
    keys = ["a", "b", "a", "b", "a"]
    drafts = ["x = 4", "Paris", "x = 5", "it is Lyon", "so x = 4"]
    teachers = [TEACHER_A, TEACHER_B, TEACHER_A, TEACHER_B, TEACHER_A]
    got = score_by_group(client, keys, drafts, teachers, reward="prob")
    direct = client.score(
        [
            {"drafts": ["x = 4", "x = 5", "so x = 4"], "teacher": TEACHER_A},
            {"drafts": ["Paris", "it is Lyon"], "teacher": TEACHER_B},
        ],
        reward="prob",
    )
    a, b = direct.groups
    assert got == pytest.approx([a.reward[0], b.reward[0], a.reward[1], b.reward[1], a.reward[2]])
    assert got[0] > got[2] and got[1] > got[3]  # agreeing drafts score higher


def test_trl_reward_takes_plain_and_conversational_completions(client):
    reward = trl_reward(client, teacher_column="teacher")
    prompts = ["Solve 2x = 8.", "Solve 2x = 8."]
    plain = reward(prompts, ["x = 4", "x = 7"], teacher=[TEACHER_A, TEACHER_A])
    chat = reward(
        prompts,
        [[{"role": "assistant", "content": "x = 4"}], [{"role": "assistant", "content": "x = 7"}]],
        teacher=[TEACHER_A, TEACHER_A],
    )
    assert plain == pytest.approx(chat) and plain[0] > plain[1]
    assert reward.__name__ == "omniopd_teacher_agreement"
    with pytest.raises(KeyError, match="no column 'teacher'"):
        reward(prompts, ["x = 4", "x = 7"])


def test_verl_compute_score_groups_by_index(client):
    compute_score = verl_compute_score(client, metric="lexical")
    infos = [
        {"index": 0, "teacher": TEACHER_A},
        {"index": 1, "teacher": TEACHER_B},
        {"index": 0, "teacher": TEACHER_A},
    ]
    scores = compute_score(["math"] * 3, ["x = 4", "Paris", "x = 9"], [None] * 3, infos)
    assert len(scores) == 3 and scores[0] > scores[2]


def test_mismatched_lengths_are_refused(client):
    with pytest.raises(ValueError, match="one entry per row"):
        score_by_group(client, ["a"], ["x", "y"], [TEACHER_A])
