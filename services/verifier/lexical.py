"""The verifier's model-free metrics: ``lexical``, ``edit`` and ``rouge1``.

``lexical`` is a character n-gram F-score after chrF (Popović, 2015):

    text    → whitespace removed (as sacreBLEU's chrF does by default)
    P_n,R_n = matched n-grams / n-grams of a, of b   (multiset intersection, clipped counts)
    F_n     = (1 + β²) P_n R_n / (β² P_n + R_n)      (0 when P_n = R_n = 0)
    s(a, b) = mean of F_n over n = 1 … N, skipping the orders where neither text has an n-gram

Defaults N = 6 (chrF's) and β = 1 (not chrF's 2): with β = 1 the score is symmetric,
s(a, b) = s(b, a), like the cosine it stands in for, so draft-vs-draft similarities (the student
prior) do not depend on which draft is called the hypothesis. Two empty texts score 1.

``edit`` (1 − normalised character Levenshtein distance) and ``rouge1`` (unigram F1, Lin 2004)
are the two agreements the OmniOPD paper uses for φ (docs/method.md). Every score is in [0, 1].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist


@dataclass(frozen=True)
class NgramProfile:
    """Character n-gram counts of one text for n = 1 … N (``counts[n - 1]``)."""

    counts: tuple[Counter[str], ...]
    totals: tuple[int, ...]


def ngram_profile(text: str, max_n: int) -> NgramProfile:
    chars = "".join(text.split())
    counts = tuple(
        Counter(chars[i : i + n] for i in range(len(chars) - n + 1)) for n in range(1, max_n + 1)
    )
    return NgramProfile(counts=counts, totals=tuple(c.total() for c in counts))


def _matches(a: Counter[str], b: Counter[str]) -> int:
    if len(a) > len(b):
        a, b = b, a
    return sum(min(count, b[gram]) for gram, count in a.items() if gram in b)


def chrf(a: NgramProfile, b: NgramProfile, beta: float = 1.0) -> float:
    """s(a, b) in [0, 1] as in the module docstring; both profiles must share one N."""
    if len(a.counts) != len(b.counts):
        raise ValueError(f"profiles have different N: {len(a.counts)} and {len(b.counts)}")
    beta2 = beta * beta
    scores: list[float] = []
    for ca, cb, ta, tb in zip(a.counts, b.counts, a.totals, b.totals, strict=True):
        if ta == 0 and tb == 0:
            continue
        hit = _matches(ca, cb) if ta and tb else 0
        if hit == 0:
            scores.append(0.0)
            continue
        p, r = hit / ta, hit / tb
        scores.append((1.0 + beta2) * p * r / (beta2 * p + r))
    return sum(scores) / len(scores) if scores else 1.0


def chrf_matrix(
    rows: Sequence[NgramProfile], cols: Sequence[NgramProfile], beta: float = 1.0
) -> np.ndarray:
    """(len(rows), len(cols)) matrix of :func:`chrf` scores."""
    out = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = chrf(a, b, beta)
    return out


# -- the published metrics: character edit similarity and ROUGE-1 -----------------------------

_WORD = re.compile(r"[a-z0-9]+")


def edit_similarity(a: str, b: str) -> float:
    """``1 − lev(a, b) / max(|a|, |b|)`` in [0, 1], over characters; two empty texts score 1.

    Levenshtein distance with unit costs, from rapidfuzz (its ``normalized_similarity`` is
    this formula).
    """
    return float(Levenshtein.normalized_similarity(a, b))


def edit_matrix(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """(len(rows), len(cols)) matrix of :func:`edit_similarity` (rapidfuzz's ``cdist``)."""
    if not rows or not cols:
        return np.zeros((len(rows), len(cols)))
    return cdist(rows, cols, scorer=Levenshtein.normalized_similarity, dtype=np.float64)


def rouge1_tokens(text: str) -> Counter[str]:
    """Unigram counts as ROUGE's reference scorer tokenises: lower case, runs of [a-z0-9], no
    stemming (``37+96=133.`` → 37, 96, 133)."""
    return Counter(_WORD.findall(text.lower()))


def rouge1_f1(a: Counter[str], b: Counter[str]) -> float:
    """ROUGE-1 F1 of two unigram multisets in [0, 1] (symmetric). A text without a token scores
    0 against anything, itself included, as in ROUGE's reference scorer: text that is only
    punctuation or other scripts carries no evidence of agreement."""
    na, nb = a.total(), b.total()
    if na == 0 or nb == 0:
        return 0.0
    return 2.0 * _matches(a, b) / (na + nb)


def rouge1_matrix(rows: Sequence[Counter[str]], cols: Sequence[Counter[str]]) -> np.ndarray:
    """(len(rows), len(cols)) matrix of :func:`rouge1_f1`."""
    out = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = rouge1_f1(a, b)
    return out
