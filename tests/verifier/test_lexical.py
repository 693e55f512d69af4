"""The ``lexical`` metric: character n-gram F-score (chrF-like), hand-computed and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd.verifier.lexical import (
    chrf,
    chrf_matrix,
    edit_matrix,
    edit_similarity,
    ngram_profile,
    rouge1_f1,
    rouge1_matrix,
    rouge1_tokens,
)


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


# -- edit and rouge1, the published agreements --------------------------------------------------


def test_edit_similarity_hand_computed():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)  # 3 edits, 7 chars
    assert edit_similarity("37+96=133", "37+96=134") == pytest.approx(1 - 1 / 9)
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("", "abcd") == 0.0
    assert edit_similarity("ab", "ba") == pytest.approx(0.0)  # two substitutions over 2 chars
    m = edit_matrix(["ab", "abcd"], ["abc", "", "abcd"])
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, [[2 / 3, 0.0, 0.5], [0.75, 0.0, 1.0]])
    assert edit_matrix([], ["a"]).shape == (0, 1)


def test_rouge1_hand_computed():
    def r(a: str, b: str) -> float:
        return rouge1_f1(rouge1_tokens(a), rouge1_tokens(b))

    # Tokens: lower case, runs of letters and digits; "48*2=96." -> 48, 2, 96.
    assert rouge1_tokens("48*2=96. So X") == {"48": 1, "2": 1, "96": 1, "so": 1, "x": 1}
    # 37, 96, 133 vs 37, 96, 134: 2 of 3 match each way -> F1 = 2/3.
    assert r("37+96=133", "37+96=134") == pytest.approx(2 / 3)
    # "the cat sat" (3) vs "the the cat" (3): matches min(1,2) + 1 = 2 -> F1 = 2*2/6.
    assert r("the cat sat", "the the cat") == pytest.approx(2 / 3)
    assert r("A B", "b a") == 1.0
    # A text without a token is no evidence of agreement (ROUGE's reference scorer: F = 0).
    assert r("", "...") == 0.0 and r("**", "**") == 0.0 and r("中文", "中文") == 0.0
    assert r("", "x") == 0.0
    rows = [rouge1_tokens(t) for t in ("a b", "c")]
    assert rouge1_matrix(rows, rows).tolist() == [[1.0, 0.0], [0.0, 1.0]]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_edit_and_rouge1_are_symmetric_and_bounded(a, b):
    def rouge(x: str, y: str) -> float:
        return rouge1_f1(rouge1_tokens(x), rouge1_tokens(y))

    for f in (edit_similarity, rouge):
        value = f(a, b)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(f(b, a))
    assert edit_similarity(a, a) == 1.0
    assert rouge(a, a) == (1.0 if rouge1_tokens(a) else 0.0)
