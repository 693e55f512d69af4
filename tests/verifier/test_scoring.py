"""The scoring math of step 5 (docs/method.md): hand-computed values, scipy's distributions, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import special, stats

from omniopd.verifier.scoring import (
    advantages,
    beta_binomial_posterior,
    cosine_similarity,
    dirichlet_counts,
    dirichlet_posterior,
    dirichlet_prior_mean,
    rewards,
    score_group,
    student_agreement,
)

# ---------------------------------------------------------------- hand-computed values

S_KM = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])  # K = 2 drafts, M = 3 teacher chunks
S_KK = np.array([[1.0, 0.4], [0.4, 1.0]])


def test_student_agreement_by_hand():
    # p_S,i = (Σ_{k≠i} s_ik + α·0.5) / (K − 1 + α) = (0.4 + 1) / (1 + 2) = 7/15 for both.
    np.testing.assert_allclose(student_agreement(S_KK, 2.0), [7 / 15, 7 / 15])
    # The diagonal never counts, whatever it holds.
    np.testing.assert_allclose(
        student_agreement(np.array([[0.3, 0.4], [0.4, 0.0]]), 2.0), [7 / 15] * 2
    )
    # K = 1: the sum is empty, p_S = (0 + α/2)/α = 0.5 for any α.
    assert student_agreement(np.array([[1.0]]), 3.7) == pytest.approx([0.5])


def test_beta_binomial_posterior_by_hand():
    # n = (1.5, 1), μ = 7/15, α = 2, M = 3: p_T = (n + 14/15) / 5.
    mean, var = beta_binomial_posterior(S_KM, np.array([7 / 15, 7 / 15]), 2.0)
    np.testing.assert_allclose(mean, [73 / 150, 29 / 75])
    np.testing.assert_allclose(var, [73 / 150 * 77 / 150 / 6, 29 / 75 * 46 / 75 / 6])


def test_score_group_student_prior_logratio_by_hand():
    out = score_group(S_KM, S_KK, prior="student", alpha=2.0, reward="logratio")
    np.testing.assert_allclose(out.student_agreement_K, [7 / 15, 7 / 15])
    np.testing.assert_allclose(out.teacher_agreement_K, [73 / 150, 29 / 75])
    r = [math.log((73 / 150) / (7 / 15)), math.log((29 / 75) / (7 / 15))]
    np.testing.assert_allclose(out.reward_K, r)
    np.testing.assert_allclose(out.advantage_K, [(r[0] - r[1]) / 2, (r[1] - r[0]) / 2])
    np.testing.assert_array_equal(out.similarity_KM, S_KM)


def test_score_group_uniform_prior_by_hand():
    # Uniform prior: μ = 0.5, so p_T = (n + 1) / 5 = (0.5, 0.4); the logratio baseline is
    # still the student agreement from the drafts, 7/15.
    prob = score_group(S_KM, S_KK, prior="uniform", alpha=2.0, reward="prob")
    np.testing.assert_allclose(prob.teacher_agreement_K, [0.5, 0.4])
    np.testing.assert_allclose(prob.reward_K, [0.5, 0.4])
    np.testing.assert_allclose(prob.advantage_K, [0.05, -0.05])
    ratio = score_group(S_KM, S_KK, prior="uniform", alpha=2.0, reward="logratio")
    np.testing.assert_allclose(ratio.reward_K, [math.log(0.5 * 15 / 7), math.log(0.4 * 15 / 7)])


def test_normalized_advantage_by_hand():
    # r = (0.5, 0.4): centred ±0.05, population std 0.05, so A = (1, −1).
    out = score_group(
        S_KM, S_KK, prior="uniform", alpha=2.0, reward="prob", normalize_advantage=True
    )
    np.testing.assert_allclose(out.advantage_K, [1.0, -1.0])
    # Equal rewards: A = 0, not 0/0.
    np.testing.assert_array_equal(advantages(np.array([0.3, 0.3, 0.3]), normalize=True), [0, 0, 0])


def test_dirichlet_counts_by_hand():
    # Column sums 1.5 and 1.4 exceed 1, so each column is normalised; "other" gets nothing.
    counts = dirichlet_counts(np.array([[1.0, 0.8], [0.5, 0.6]]))
    np.testing.assert_allclose(counts, [2 / 3 + 4 / 7, 1 / 3 + 3 / 7, 0.0])
    # A column summing to 0.7 keeps its values; the remaining 0.3 goes to "other".
    np.testing.assert_allclose(dirichlet_counts(np.array([[0.5], [0.2]])), [0.5, 0.2, 0.3])


def test_dirichlet_prior_mean_by_hand():
    # (0.6, 0.4, 1 − 0.5) / 1.5
    np.testing.assert_allclose(dirichlet_prior_mean(np.array([0.6, 0.4])), [0.4, 0.4 / 1.5, 1 / 3])
    # Uniform μ = 0.5 gives the symmetric 1/(K+1); K = 1 gives (μ, 1 − μ).
    np.testing.assert_allclose(dirichlet_prior_mean(np.full(3, 0.5)), [0.25] * 4)
    np.testing.assert_allclose(dirichlet_prior_mean(np.array([0.3])), [0.3, 0.7])


def test_dirichlet_posterior_by_hand():
    # n = (26/21, 16/21, 0), m = 1/3 each, α = 3, M = 2: p = (n + 1) / 5.
    mean, var = dirichlet_posterior(np.array([[1.0, 0.8], [0.5, 0.6]]), np.full(2, 0.5), 3.0)
    np.testing.assert_allclose(mean, [47 / 105, 37 / 105])
    np.testing.assert_allclose(var, [47 / 105 * 58 / 105 / 6, 37 / 105 * 68 / 105 / 6])


def test_dirichlet_with_one_draft_is_the_beta_binomial():
    s = np.array([[0.9, 0.1, 0.5]])
    mu = np.array([0.3])
    for got, want in zip(
        dirichlet_posterior(s, mu, 2.5), beta_binomial_posterior(s, mu, 2.5), strict=True
    ):
        np.testing.assert_allclose(got, want)


def test_cosine_similarity_clips_and_survives_zero_vectors():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[-1.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [[0, 1], [0, 0], [0, 0.6]])


def test_rewards_name_unknown_kind():
    with pytest.raises(ValueError, match="reward must be"):
        rewards(np.array([0.5]), np.array([0.5]), "nope")  # type: ignore[arg-type]


def test_score_group_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        score_group(S_KM, S_KK, prior="student", alpha=0.0, reward="prob")
    with pytest.raises(ValueError, match="prior must be"):
        score_group(S_KM, S_KK, prior="x", alpha=1.0, reward="prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="posterior must be"):
        score_group(S_KM, S_KK, prior="student", alpha=1.0, reward="prob", posterior="x")  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties

unit = st.floats(0.0, 1.0, allow_nan=False)
alphas = st.floats(1e-3, 1e6, allow_nan=False)
priors = st.sampled_from(["student", "uniform"])
posteriors = st.sampled_from(["beta_binomial", "dirichlet"])


@st.composite
def similarities(draw, min_m: int = 0, hard: bool = False):
    """(s_KM, s_KK): K in 1..6, M in min_m..10, entries in [0, 1] (or {0, 1} when hard)."""
    k = draw(st.integers(1, 6))
    m = draw(st.integers(min_m, 10))
    elements = st.sampled_from([0.0, 1.0]) if hard else unit
    s_km = draw(arrays(np.float64, (k, m), elements=elements))
    upper = draw(arrays(np.float64, (k, k), elements=unit))
    s_kk = np.triu(upper, 1) + np.triu(upper, 1).T + np.eye(k)
    return s_km, s_kk


@settings(max_examples=200, deadline=None)
@given(similarities(), alphas, priors, posteriors, st.sampled_from(["prob", "logratio"]))
def test_estimates_stay_inside_the_unit_interval(sims, alpha, prior, posterior, reward):
    s_km, s_kk = sims
    out = score_group(s_km, s_kk, prior=prior, alpha=alpha, reward=reward, posterior=posterior)
    for values in (out.student_agreement_K, out.teacher_agreement_K):
        assert np.all(values > 0) and np.all(values < 1), values
    assert np.all(out.variance_K > 0) and np.all(out.variance_K < 0.25)
    assert np.all(np.isfinite(out.reward_K)) and np.all(np.isfinite(out.advantage_K))


@settings(max_examples=150, deadline=None)
@given(similarities(), alphas, priors, st.data())
def test_more_agreeing_teacher_samples_never_lower_an_estimate(sims, alpha, prior, data):
    s_km, s_kk = sims
    k = s_km.shape[0]
    i = data.draw(st.integers(0, k - 1), label="draft")

    def p_t(s: np.ndarray, posterior: str) -> float:
        out = score_group(s, s_kk, prior=prior, alpha=alpha, reward="prob", posterior=posterior)
        return float(out.teacher_agreement_K[i])

    # Beta-Binomial: one more teacher sample agreeing with draft i (whatever it says of the
    # others), or any agreement raised, never lowers p_T,i.
    extra = data.draw(arrays(np.float64, (k, 1), elements=unit), label="new column")
    extra[i, 0] = 1.0
    before = p_t(s_km, "beta_binomial")
    assert p_t(np.hstack([s_km, extra]), "beta_binomial") >= before - 1e-12
    raised = s_km.copy()
    if raised.shape[1]:
        j = data.draw(st.integers(0, raised.shape[1] - 1), label="teacher sample")
        raised[i, j] = data.draw(st.floats(raised[i, j], 1.0), label="new value")
    assert p_t(raised, "beta_binomial") >= before - 1e-12
    # Dirichlet: drafts compete, so "agreeing" is a sample that agrees with draft i alone.
    alone = np.zeros((k, 1))
    alone[i, 0] = 1.0
    assert p_t(np.hstack([s_km, alone]), "dirichlet") >= p_t(s_km, "dirichlet") - 1e-12


def _sequence_probability_bb(n: int, m: int, a: float, b: float) -> float:
    """P(one particular order of n agreeing out of m) under scipy's Beta-Binomial."""
    return stats.betabinom.pmf(n, m, a, b) / special.comb(m, n)


@settings(max_examples=100, deadline=None)
@given(similarities(min_m=1, hard=True), st.floats(0.05, 50), priors)
def test_hard_similarities_match_scipy_beta_binomial(sims, alpha, prior):
    s_km, s_kk = sims
    m = s_km.shape[1]
    out = score_group(s_km, s_kk, prior=prior, alpha=alpha, reward="prob")
    mu = out.student_agreement_K if prior == "student" else np.full(len(s_km), 0.5)
    for i, n in enumerate(s_km.sum(axis=1).astype(int)):
        a, b = alpha * mu[i], alpha * (1 - mu[i])
        # Posterior predictive that sample M+1 agrees = ratio of sequence probabilities.
        predictive = _sequence_probability_bb(n + 1, m + 1, a, b) / _sequence_probability_bb(
            n, m, a, b
        )
        assert out.teacher_agreement_K[i] == pytest.approx(predictive, rel=1e-9)
        assert out.variance_K[i] == pytest.approx(stats.beta(a + n, b + m - n).var(), rel=1e-9)


def _sequence_probability_dm(x: np.ndarray, alpha_vec: np.ndarray) -> float:
    n = int(x.sum())
    coefficient = math.factorial(n) / math.prod(math.factorial(int(c)) for c in x)
    return stats.dirichlet_multinomial.pmf(x, alpha_vec, n) / coefficient


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.floats(0.05, 50), priors, st.data())
def test_categorical_samples_match_scipy_dirichlet_multinomial(k, m, alpha, prior, data):
    # Each teacher sample agrees with exactly one draft or with none ("other").
    picks = data.draw(st.lists(st.integers(0, k), min_size=m, max_size=m), label="categories")
    s_km = np.zeros((k, m))
    for j, c in enumerate(picks):
        if c < k:
            s_km[c, j] = 1.0
    upper = data.draw(arrays(np.float64, (k, k), elements=unit), label="draft sims")
    s_kk = np.triu(upper, 1) + np.triu(upper, 1).T + np.eye(k)
    out = score_group(s_km, s_kk, prior=prior, alpha=alpha, reward="prob", posterior="dirichlet")
    mu = out.student_agreement_K if prior == "student" else np.full(k, 0.5)
    alpha_vec = alpha * dirichlet_prior_mean(mu)
    x = np.bincount(picks, minlength=k + 1).astype(float)
    posterior = stats.dirichlet(alpha_vec + x)
    for i in range(k):
        e_i = np.zeros(k + 1)
        e_i[i] = 1
        predictive = _sequence_probability_dm(x + e_i, alpha_vec) / _sequence_probability_dm(
            x, alpha_vec
        )
        assert out.teacher_agreement_K[i] == pytest.approx(predictive, rel=1e-9)
        assert out.teacher_agreement_K[i] == pytest.approx(posterior.mean()[i], rel=1e-9)
        assert out.variance_K[i] == pytest.approx(posterior.var()[i], rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(similarities(), alphas, priors, posteriors)
def test_no_teacher_samples_return_the_prior(sims, alpha, prior, posterior):
    _, s_kk = sims
    k = len(s_kk)
    out = score_group(
        np.zeros((k, 0)), s_kk, prior=prior, alpha=alpha, reward="prob", posterior=posterior
    )
    mu = out.student_agreement_K if prior == "student" else np.full(k, 0.5)
    expected = mu if posterior == "beta_binomial" else dirichlet_prior_mean(mu)[:-1]
    np.testing.assert_allclose(out.teacher_agreement_K, expected, rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 8), elements=st.floats(-50, 50, allow_nan=False)),
    st.booleans(),
)
def test_advantages_of_a_group_sum_to_zero(r, normalize):
    a = advantages(r, normalize)
    scale = max(1.0, float(np.abs(a).max()))
    assert abs(a.sum()) <= 1e-9 * scale * len(a)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 5), st.just(4)), elements=st.floats(-10, 10)),
    arrays(np.float64, st.tuples(st.integers(0, 5), st.just(4)), elements=st.floats(-10, 10)),
)
def test_cosine_similarity_is_in_the_unit_interval(a, b):
    s = cosine_similarity(a, b)
    assert s.shape == (len(a), len(b))
    assert np.all((s >= 0) & (s <= 1))


def test_likelihood_prior_is_the_published_target():
    """prior "likelihood": p_T = (Σ_n s_n + α·π̄) / (N + α) per draft, π̄ given by the caller."""
    s_KM = np.array([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0]])
    out = score_group(
        s_KM,
        np.ones((2, 2)),
        prior="likelihood",
        alpha=1.0,
        reward="prob",
        prior_mean_K=np.array([0.5, 1.0]),
    )
    np.testing.assert_allclose(out.teacher_agreement_K, [(1.75 + 0.5) / 4, 1.0 / 4])
    np.testing.assert_allclose(out.reward_K, out.teacher_agreement_K)
    with pytest.raises(ValueError, match="2 prior means"):
        score_group(s_KM, np.ones((2, 2)), prior="likelihood", alpha=1.0, reward="prob")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        score_group(
            s_KM,
            np.ones((2, 2)),
            prior="likelihood",
            alpha=1.0,
            reward="prob",
            prior_mean_K=np.array([0.0, 1.0]),
        )
