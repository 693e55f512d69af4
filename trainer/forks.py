"""Step 2 of the drafts objective (docs/method.md): where to fork, which positions to audit.

A fork at position ``f`` of a response ``y`` audits the student's choice of ``y[f:f+L]`` given
``x ⊕ y[:f]``. ``entropy_BT[b, f]`` is the entropy of the distribution ``y[b, f]`` was drawn
from, so a peak of H_t marks a position where the student was unsure what to write next.

Forks fall only on content tokens (``content_mask``): never on the EOS itself, never past it,
never on padding, so every fork has a non-empty context-to-end chunk to audit.
"""

from __future__ import annotations

import random

import torch


def content_mask(
    tokens_BT: torch.Tensor, mask_BT: torch.Tensor, eos_ids: list[int]
) -> torch.Tensor:
    """Real response tokens that are not EOS (B, T); a prefix of each row."""
    eos = torch.tensor(eos_ids, device=tokens_BT.device)
    return mask_BT.bool() & ~torch.isin(tokens_BT, eos)


def entropy_threshold(
    entropy_BT: torch.Tensor, valid_BT: torch.Tensor, quantile: float, min_entropy: float
) -> float:
    """max(q-quantile of H_t over every valid token of the batch, h_min); inf if none valid."""
    values = entropy_BT[valid_BT].float()
    if values.numel() == 0:
        return float("inf")
    return max(float(torch.quantile(values, quantile)), min_entropy)


def local_maxima(entropy: list[float]) -> list[int]:
    """Positions t with H[t] ≥ both neighbours (a missing neighbour counts as lower).

    Every position of a flat plateau qualifies; spacing later keeps the first of them.
    """
    n = len(entropy)
    return [
        t
        for t in range(n)
        if (t == 0 or entropy[t] >= entropy[t - 1]) and (t == n - 1 or entropy[t] >= entropy[t + 1])
    ]


def pick_spaced(candidates: list[int], max_forks: int, spacing: int) -> list[int]:
    """Greedy: take candidates in the given order while each is ≥ ``spacing`` from those taken."""
    chosen: list[int] = []
    for t in candidates:
        if len(chosen) == max_forks:
            break
        if all(abs(t - s) >= spacing for s in chosen):
            chosen.append(t)
    return sorted(chosen)


def peak_entropy_forks(
    entropy_BT: torch.Tensor,
    valid_BT: torch.Tensor,
    *,
    quantile: float,
    min_entropy: float,
    max_forks: int,
    spacing: int,
) -> list[list[int]]:
    """Fork positions per response, ascending: the drafts objective's peak-entropy scheduler.

    A position qualifies when it is a local maximum of its row's H_t (over valid positions
    only) and H_t ≥ :func:`entropy_threshold`. Per row, qualifying positions are taken highest
    H_t first (ties: earlier first), skipping any closer than ``spacing`` (the chunk length L)
    to one already taken, up to ``max_forks``.

    entropy_BT: (B, T) nats; valid_BT: (B, T) bool, a prefix of each row (see
    :func:`content_mask`).
    """
    threshold = entropy_threshold(entropy_BT, valid_BT, quantile, min_entropy)
    forks: list[list[int]] = []
    for row_H, row_valid in zip(entropy_BT.tolist(), valid_BT.tolist(), strict=True):
        H = row_H[: sum(row_valid)]
        peaks = [t for t in local_maxima(H) if H[t] >= threshold]
        peaks.sort(key=lambda t: (-H[t], t))
        forks.append(pick_spaced(peaks, max_forks, spacing))
    return forks


def random_forks(
    counts: list[int], valid_BT: torch.Tensor, *, spacing: int, rng: random.Random
) -> list[list[int]]:
    """Control arm: ``counts[b]`` uniformly random valid positions per row, same spacing rule.

    Given the peak scheduler's counts, it audits as many chunks at positions chosen without
    looking at entropy. A row too short for its count gets fewer (greedy, in random order).
    """
    forks = []
    for count, row_valid in zip(counts, valid_BT.tolist(), strict=True):
        positions = list(range(sum(row_valid)))
        rng.shuffle(positions)
        forks.append(pick_spaced(positions, count, spacing))
    return forks
