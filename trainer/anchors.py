"""Step 2 of the published objective (docs/method.md): which chunks of each response to audit.

Per response, up to M non-overlapping chunks of exactly C tokens, ``y[a : a+C]``. Anchors are
taken greedily by the student's entropy at the anchor, ``H_a``: the entropy of the distribution
``y[a]`` was drawn from, i.e. how unsure the student was when it began the chunk. Highest first,
ties to the later position; a chunk that would overlap one already taken, or run past the end of
the response, is skipped. Fewer than M when fewer fit, none when the response is shorter than C.
These rules follow the OmniOPD paper's section 3.2.3 as its public re-implementation states them.

A response here is every sampled token the mask keeps, its end-of-sequence token included: a
chunk may end with EOS, and the teacher's continuations of the same prefix may end there too.
"""

from __future__ import annotations

import random

import torch

from omniopd.trainer.forks import pick_spaced


def select_anchors(
    entropy_T: list[float], length: int, *, max_chunks: int, chunk_tokens: int
) -> list[int]:
    """Chunk starts (ascending) for one response of ``length`` tokens with entropies ``H_t``.

    Candidates are ``0 … length − C``; ranked by (H, position) descending, so equal entropies go
    to the later position; taken greedily without overlap (starts at least C apart), at most
    ``max_chunks`` (the drafts objective's :func:`~omniopd.trainer.forks.pick_spaced`).
    """
    candidates = range(max(0, length - chunk_tokens + 1))
    order = sorted(candidates, key=lambda a: (entropy_T[a], a), reverse=True)
    return pick_spaced(order, max_chunks, chunk_tokens)


def peak_entropy_anchors(
    entropy_BT: torch.Tensor, mask_BT: torch.Tensor, *, max_chunks: int, chunk_tokens: int
) -> list[list[int]]:
    """:func:`select_anchors` for every row; ``mask_BT`` marks each row's tokens (a prefix)."""
    lengths = mask_BT.sum(-1).tolist()
    return [
        select_anchors(row, n, max_chunks=max_chunks, chunk_tokens=chunk_tokens)
        for row, n in zip(entropy_BT.float().tolist(), lengths, strict=True)
    ]


def random_anchors(
    counts: list[int], lengths: list[int], *, chunk_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Control arm: ``counts[b]`` chunk starts per row in random order, same non-overlap rule.

    Given the entropy scheduler's counts it audits as many chunks without looking at entropy;
    a random order can pack fewer chunks into a row than the entropy order did.
    """
    out = []
    for count, n in zip(counts, lengths, strict=True):
        order = list(range(max(0, n - chunk_tokens + 1)))
        rng.shuffle(order)
        out.append(pick_spaced(order, count, chunk_tokens))
    return out


def audited_mask(
    anchors: list[list[int]], shape: tuple[int, int], chunk_tokens: int
) -> torch.Tensor:
    """(B, T) bool: True on every token some chunk covers."""
    audited_BT = torch.zeros(shape, dtype=torch.bool)
    for b, row in enumerate(anchors):
        for a in row:
            audited_BT[b, a : a + chunk_tokens] = True
    return audited_BT
