"""Step 2 of the published objective: chunk anchors at entropy peaks (trainer/anchors.py)."""

from __future__ import annotations

import itertools
import random

import torch

from omniopd.trainer.anchors import (
    audited_mask,
    peak_entropy_anchors,
    random_anchors,
    select_anchors,
)


def test_highest_entropy_first_without_overlap():
    H = [0.1, 0.9, 0.2, 0.3, 0.8, 0.1, 0.1, 0.7, 0.0, 0.0]
    # C = 3, candidates 0..7: 1 (0.9) first; 4 (0.8) is 3 away, taken; 7 (0.7) taken.
    assert select_anchors(H, 10, max_chunks=10, chunk_tokens=3) == [1, 4, 7]
    # Overlapping candidates are skipped: 2 and 3 are within 3 of anchor 1 or 4.
    assert select_anchors(H, 10, max_chunks=2, chunk_tokens=3) == [1, 4]
    # A chunk may not run past the response: with length 8 anchor 7 cannot start one (7+3 > 8).
    assert select_anchors(H, 8, max_chunks=10, chunk_tokens=3) == [1, 4]


def test_ties_go_to_the_later_position():
    H = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert select_anchors(H, 6, max_chunks=1, chunk_tokens=2) == [4]
    # Then 2 (4 taken, 3 and 5 overlap it), then 0.
    assert select_anchors(H, 6, max_chunks=3, chunk_tokens=2) == [0, 2, 4]
    assert select_anchors([1.0, 2.0, 2.0, 1.0], 4, max_chunks=1, chunk_tokens=1) == [2]


def test_greedy_takes_fewer_than_m_when_fewer_fit():
    # The peak at 2 blocks 0..4 for C = 3; only starts 0..4 exist for length 7: one chunk left
    # that does not overlap would need a start >= 5 (runs past) or <= -1.
    H = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert select_anchors(H, 7, max_chunks=5, chunk_tokens=3) == [2]


def test_short_responses_get_no_chunk_and_exact_length_one():
    assert select_anchors([1.0, 2.0], 2, max_chunks=3, chunk_tokens=3) == []
    assert select_anchors([], 0, max_chunks=3, chunk_tokens=1) == []
    assert select_anchors([1.0, 2.0, 0.5], 3, max_chunks=3, chunk_tokens=3) == [0]


def test_batched_rows_use_their_own_length():
    H = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.8, 0.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    # Row 1 has 3 tokens: start 2 would run past it, so only starts 0 and 1 exist.
    assert peak_entropy_anchors(H, mask, max_chunks=2, chunk_tokens=2) == [[1, 4], [1]]


def test_random_anchors_follow_the_same_rules():
    rng = random.Random(0)
    for _ in range(50):
        rows = random_anchors([3, 2, 1], [12, 5, 1], chunk_tokens=3, rng=rng)
        assert len(rows[0]) <= 3 and len(rows[1]) <= 2 and rows[2] == []
        for row, n in zip(rows, [12, 5, 1], strict=True):
            assert all(0 <= a <= n - 3 for a in row)
            assert all(b - a >= 3 for a, b in itertools.pairwise(row))


def test_audited_mask_covers_each_chunk():
    mask = audited_mask([[0, 4], [], [1]], (3, 7), 2)
    assert mask.int().tolist() == [
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0],
    ]
