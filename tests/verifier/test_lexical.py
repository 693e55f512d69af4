"""The ``lexical`` metric: character n-gram F-score (chrF-like), hand-computed and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd.verifier.lexical import chrf, chrf_matrix, ngram_profile


def s(a: str, b: str, n: int = 6, beta: float = 1.0) -> float:
    return chrf(ngram_profile(a, n), ngram_profile(b, n), beta)


def test_hand_computed_scores():
    assert s("ab", "ab") == 1.0
    # n=1: one of two unigrams match (F = 1/2); n=2: "ab" vs "ac" (F = 0); n >= 3: neither
    # text has such n-grams, so those orders are skipped.
    assert s("ab", "ac") == pytest.approx(0.25)
    # "abc" vs "ab": n=1 P=2/3 R=1 F=0.8; n=2 P=1/2 R=1 F=2/3; n=3 only "abc" has one, F=0.
    assert s("abc", "ab") == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # chrF's own beta = 2 weighs recall (of the second text's n-grams) more.
    assert s("abc", "ab", beta=2.0) == pytest.approx((10 / 11 + 5 / 6 + 0) / 3)


def test_whitespace_is_ignored_and_empty_texts_agree():
    assert s("x = 4", "x=4") == 1.0
    assert s("", "  ") == 1.0
    assert s("", "abc") == 0.0


def test_repeated_ngrams_are_clipped():
    # "aaaa" vs "aa": unigrams match min(4, 2) = 2 -> P = 2/4, R = 1.
    assert s("aaaa", "aa", n=1) == pytest.approx(2 * 0.5 / 1.5)


def test_profiles_of_different_orders_are_refused():
    with pytest.raises(ValueError, match="different N"):
        chrf(ngram_profile("a", 2), ngram_profile("a", 3))


def test_matrix_shape_and_values():
    rows = [ngram_profile(t, 4) for t in ("x = 4", "y")]
    cols = [ngram_profile(t, 4) for t in ("x = 4", "z", "y")]
    m = chrf_matrix(rows, cols)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[:, 0], [1.0, 0.0])
    assert m[1, 2] == 1.0


texts = st.text(alphabet="ab c=1", max_size=20)


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.integers(1, 6))
def test_symmetric_bounded_and_one_on_identity(a, b, n):
    assert 0.0 <= s(a, b, n) <= 1.0
    assert s(a, b, n) == pytest.approx(s(b, a, n))
    assert s(a, a, n) == 1.0
