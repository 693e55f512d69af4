"""Step 2: the peak-entropy scheduler and its random control arm."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from omniopd.trainer.forks import (
    content_mask,
    entropy_threshold,
    local_maxima,
    peak_entropy_forks,
    random_forks,
)


def forks_of(rows, valid=None, **kw):
    H = torch.tensor(rows, dtype=torch.float)
    valid = torch.ones_like(H, dtype=torch.bool) if valid is None else torch.tensor(valid)
    args = {"quantile": 0.0, "min_entropy": 0.0, "max_forks": 4, "spacing": 1} | kw
    return peak_entropy_forks(H, valid, **args)


def test_local_maxima_include_ends_and_plateaus():
    assert local_maxima([3, 1, 2, 1, 5]) == [0, 2, 4]
    assert local_maxima([1, 2, 2, 1]) == [1, 2]
    assert local_maxima([]) == []
    assert local_maxima([0.5]) == [0]


def test_highest_first_then_spacing():
    # Peaks at 1 (0.9), 3 (1.0), 6 (0.8); with spacing 3, 3 wins and 1 (distance 2) is dropped.
    H = [[0.1, 0.9, 0.2, 1.0, 0.1, 0.1, 0.8, 0.1]]
    assert forks_of(H, spacing=3) == [[3, 6]]
    assert forks_of(H, spacing=1) == [[1, 3, 6]]
    assert forks_of(H, spacing=1, max_forks=2) == [[1, 3]]
    assert forks_of(H, spacing=1, max_forks=1) == [[3]]


def test_ties_are_broken_by_earlier_position():
    H = [[0.1, 1.0, 0.1, 1.0, 0.1, 1.0]]
    assert forks_of(H, spacing=1, max_forks=2) == [[1, 3]]
    # A plateau: every position is a local maximum, spacing keeps the first and every L-th.
    assert forks_of([[0.5] * 7], spacing=3) == [[0, 3, 6]]


def test_spacing_at_least_chunk_length():
    torch.manual_seed(0)
    H = torch.rand(6, 64)
    for row in peak_entropy_forks(
        H,
        torch.ones_like(H, dtype=torch.bool),
        quantile=0.0,
        min_entropy=0.0,
        max_forks=10,
        spacing=7,
    ):
        assert all(b - a >= 7 for a, b in itertools.pairwise(row))
        assert len(row) <= 10


def test_quantile_is_over_the_whole_batch():
    # Row 0 is calm, row 1 is unsure: with q = 0.5 over the batch, only row 1 forks.
    H = [[0.1, 0.2, 0.1, 0.2], [1.0, 2.0, 1.0, 2.0]]
    assert forks_of(H, quantile=0.5) == [[], [1, 3]]
    # Per row it would have been different: check the threshold is the pooled quantile.
    t = entropy_threshold(torch.tensor(H), torch.ones(2, 4, dtype=torch.bool), 0.5, 0.0)
    assert t == pytest.approx(torch.tensor(H).flatten().quantile(0.5).item())


def test_min_entropy_floor():
    H = [[0.1, 0.3, 0.1, 0.6, 0.1]]
    assert forks_of(H, min_entropy=0.5) == [[3]]
    assert forks_of(H, min_entropy=1.0) == [[]]


def test_never_past_the_end_or_on_padding():
    # Row 1 has 3 valid tokens; its padding has high entropy that must be ignored, and the
    # quantile must not see it either.
    H = [[0.2, 0.9, 0.2, 0.8, 0.2], [0.1, 0.5, 0.1, 9.0, 9.0]]
    valid = [[True] * 5, [True, True, True, False, False]]
    out = forks_of(H, valid, spacing=1)
    assert out == [[1, 3], [1]]
    assert all(f < 3 for f in out[1])


def test_short_and_empty_responses():
    H = [[0.7, 0.0], [0.0, 0.0], [0.0, 0.0]]
    valid = [[True, False], [False, False], [True, False]]
    assert forks_of(H, valid) == [[0], [], [0]]
    # No valid token anywhere: no forks, no error.
    assert forks_of([[1.0, 2.0]], [[False, False]]) == [[]]


def test_content_mask_excludes_eos_and_padding():
    tokens = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert content_mask(tokens, mask, [2]).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
    ]


def test_random_forks_same_count_and_spacing():
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[2, 5:] = False
    rng = random.Random(0)
    out = random_forks([3, 0, 4], valid, spacing=4, rng=rng)
    assert len(out[0]) == 3 and out[1] == []
    assert 1 <= len(out[2]) <= 2  # only 5 valid positions: at most 2 forks spaced by 4
    for row, n in zip(out, [40, 40, 5], strict=True):
        assert all(0 <= f < n for f in row)
        assert all(b - a >= 4 for a, b in itertools.pairwise(row))
    assert random_forks([3, 0, 4], valid, spacing=4, rng=random.Random(0)) == out
