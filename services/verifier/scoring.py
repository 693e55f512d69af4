"""The verifier's scoring math (step 5 of docs/method.md) as pure numpy functions.

Shapes: ``K`` drafts of one fork, ``M`` teacher chunks of the same context, ``D`` embedding
dimensions. Every function takes and returns float64 arrays and has no state, so each formula can
be checked against hand-computed values and scipy's distributions (tests/verifier/).

The estimator is the Beta-Binomial (two-category Dirichlet-Multinomial) posterior over ``M`` soft
trials of "does teacher sample ``j`` agree with draft ``i``", with the student's own agreement
between its drafts as the prior mean (or, for the published objective, the student's own likelihood
of each draft, ``prior="likelihood"``); the optional joint variant is
a (K+1)-category Dirichlet-Multinomial over "which draft does this teacher sample agree with".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniopd.verifier.protocol import Posterior, Prior, Reward

# Below this std a group's rewards count as equal (normalised advantages are then 0).
ADVANTAGE_STD_EPS = 1e-6
_NORM_EPS = 1e-12


def cosine_similarity(a_KD: np.ndarray, b_MD: np.ndarray) -> np.ndarray:
    """``s_ij = max(0, cos(a_i, b_j))``: (K, D) x (M, D) -> (K, M), each entry in [0, 1].

    Rows are normalised here, so unnormalised embeddings work too; a zero vector has
    similarity 0 with everything (never NaN).
    """
    a = np.asarray(a_KD, dtype=np.float64)
    b = np.asarray(b_MD, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _NORM_EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), _NORM_EPS)
    return np.clip(a @ b.T, 0.0, 1.0)


def student_agreement(s_KK: np.ndarray, alpha: float) -> np.ndarray:
    """The student's agreement with each of its own drafts: (K, K) -> (K,).

        p_S,i = (Σ_{k≠i} s_ik + α·0.5) / (K − 1 + α)

    ``s_KK`` is draft-vs-draft similarity; its diagonal is ignored. With K = 1 the sum is
    empty and p_S = 0.5. Strictly inside (0, 1) for α > 0 and s in [0, 1].
    """
    s = np.asarray(s_KK, dtype=np.float64)
    k = s.shape[0]
    off_diagonal = s.sum(axis=1) - np.diagonal(s)
    return (off_diagonal + alpha * 0.5) / (k - 1 + alpha)


def beta_binomial_posterior(
    s_KM: np.ndarray, prior_mean_K: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher agreement with each draft as a Beta-Binomial posterior over M soft trials.

        n_i   = Σ_j s_ij                      soft count of teacher samples that agree
        p_T,i = (n_i + α·μ_i) / (M + α)       posterior mean of Beta(α·μ_i + n_i, α·(1−μ_i) + M − n_i)
        var_i = p_T,i (1 − p_T,i) / (M + α + 1)   its variance

    (K, M), (K,), α -> mean (K,), var (K,). With M = 0 the mean is the prior mean μ.
    """
    s = np.asarray(s_KM, dtype=np.float64)
    mu = np.asarray(prior_mean_K, dtype=np.float64)
    m = s.shape[1]
    mean = (s.sum(axis=1) + alpha * mu) / (m + alpha)
    return mean, mean * (1.0 - mean) / (m + alpha + 1.0)


def dirichlet_counts(s_KM: np.ndarray) -> np.ndarray:
    """Each teacher sample's unit of mass split over the K drafts plus "other": (K, M) -> (K+1,).

        w_ij = s_ij / max(1, Σ_k s_kj)        share of teacher sample j given to draft i
        w_oj = 1 − Σ_i w_ij                   the remainder goes to "other"
        n_i  = Σ_j w_ij,  n_o = Σ_j w_oj      (so Σ n = M)

    Row K of the result is "other". With K = 1 this is the Beta-Binomial's (n, M − n).
    """
    s = np.asarray(s_KM, dtype=np.float64)
    w = s / np.maximum(1.0, s.sum(axis=0, keepdims=True))
    counts = np.empty(s.shape[0] + 1)
    counts[:-1] = w.sum(axis=1)
    counts[-1] = max(0.0, s.shape[1] - counts[:-1].sum())
    return counts


def dirichlet_prior_mean(prior_mean_K: np.ndarray) -> np.ndarray:
    """The (K+1)-category prior mean vector built from the per-draft prior means μ: (K,) -> (K+1,).

        m = (μ_1, …, μ_K, 1 − mean_k μ_k) / (Σ_k μ_k + 1 − mean_k μ_k)

    Every entry is positive; the uniform prior (μ_i = 0.5) gives the symmetric m_i = 1/(K+1),
    and with K = 1 the vector is (μ, 1 − μ), the Beta-Binomial's prior.
    """
    mu = np.asarray(prior_mean_K, dtype=np.float64)
    weights = np.append(mu, 1.0 - mu.mean())
    return weights / weights.sum()


def dirichlet_posterior(
    s_KM: np.ndarray, prior_mean_K: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher agreement with each draft from a joint (K+1)-category Dirichlet-Multinomial.

        p_T,i = (n_i + α·m_i) / (M + α)       posterior mean of Dirichlet(α·m + n), draft i
        var_i = p_T,i (1 − p_T,i) / (M + α + 1)   its marginal variance

    with n from :func:`dirichlet_counts` and m from :func:`dirichlet_prior_mean`. Unlike the
    Beta-Binomial, drafts compete for each teacher sample: a sample that agrees with every draft
    counts a share toward each, never a whole one toward all. (K, M), (K,), α -> (K,), (K,).
    """
    s = np.asarray(s_KM, dtype=np.float64)
    counts = dirichlet_counts(s)
    prior = dirichlet_prior_mean(prior_mean_K)
    m = s.shape[1]
    mean = ((counts + alpha * prior) / (m + alpha))[:-1]
    return mean, mean * (1.0 - mean) / (m + alpha + 1.0)


def rewards(p_T_K: np.ndarray, p_S_K: np.ndarray, kind: Reward) -> np.ndarray:
    """``prob``: r_i = p_T,i.  ``logratio``: r_i = log p_T,i − log p_S,i.  (K,), (K,) -> (K,)."""
    p_t = np.asarray(p_T_K, dtype=np.float64)
    if kind == "prob":
        return p_t.copy()
    if kind == "logratio":
        return np.log(p_t) - np.log(np.asarray(p_S_K, dtype=np.float64))
    raise ValueError(f"reward must be 'prob' or 'logratio', got {kind!r}")


def advantages(r_K: np.ndarray, normalize: bool = False) -> np.ndarray:
    """A_i = r_i − mean_k r_k over one fork's drafts: (K,) -> (K,), summing to zero.

    With ``normalize`` they are divided by the group's population std (ddof = 0); a group whose
    std is below 1e-6 has no spread worth scaling up (it is float noise) and gets A = 0.
    """
    r = np.asarray(r_K, dtype=np.float64)
    centred = r - r.mean()
    if normalize:
        std = float(r.std())
        if std < ADVANTAGE_STD_EPS:
            return np.zeros_like(r)
        centred = centred / std
    return centred


@dataclass(frozen=True)
class GroupScores:
    """Every number the verifier returns for one fork (one group of drafts)."""

    similarity_KM: np.ndarray
    student_agreement_K: np.ndarray
    teacher_agreement_K: np.ndarray
    variance_K: np.ndarray
    reward_K: np.ndarray
    advantage_K: np.ndarray


def score_group(
    s_KM: np.ndarray,
    s_KK: np.ndarray,
    *,
    prior: Prior,
    alpha: float,
    reward: Reward,
    posterior: Posterior = "beta_binomial",
    normalize_advantage: bool = False,
    prior_mean_K: np.ndarray | None = None,
) -> GroupScores:
    """Step 5 for one fork (docs/method.md), from draft-vs-teacher (K, M) and draft-vs-draft
    (K, K) similarities in [0, 1].

    The student agreement p_S is always computed from the drafts: it is the prior mean under
    ``prior="student"`` and the baseline of the ``logratio`` reward under every prior
    (``prior="uniform"`` replaces the prior mean by 0.5; ``prior="likelihood"`` by the caller's
    ``prior_mean_K``, the student's geometric-mean token probability π̄ of each draft, so that
    with the Beta-Binomial posterior the teacher agreement is the published target
    π̂ = (k + α·π̄) / (N + α), k = Σ_n s_in).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    p_s = student_agreement(s_KK, alpha)
    if prior == "student":
        mu = p_s
    elif prior == "uniform":
        mu = np.full_like(p_s, 0.5)
    elif prior == "likelihood":
        if prior_mean_K is None or np.shape(prior_mean_K) != p_s.shape:
            raise ValueError(f"prior 'likelihood' needs {p_s.shape[0]} prior means, one per draft")
        mu = np.asarray(prior_mean_K, dtype=np.float64)
        if not np.all((mu > 0.0) & (mu <= 1.0)):
            raise ValueError("prior means must lie in (0, 1]")
    else:
        raise ValueError(f"prior must be 'student', 'uniform' or 'likelihood', got {prior!r}")
    if posterior == "beta_binomial":
        p_t, var = beta_binomial_posterior(s_KM, mu, alpha)
    elif posterior == "dirichlet":
        p_t, var = dirichlet_posterior(s_KM, mu, alpha)
    else:
        raise ValueError(f"posterior must be 'beta_binomial' or 'dirichlet', got {posterior!r}")
    r = rewards(p_t, p_s, reward)
    return GroupScores(
        similarity_KM=np.asarray(s_KM, dtype=np.float64),
        student_agreement_K=p_s,
        teacher_agreement_K=p_t,
        variance_K=var,
        reward_K=r,
        advantage_K=advantages(r, normalize_advantage),
    )
