"""Step 6 of docs/method.md as pure functions: both objectives' terms and the baselines'.

Every loss returns ``(loss, metrics)``: a scalar tensor to backpropagate and a dict of floats.
Shapes: N sequences (drafts, or responses for GRPO) of up to T tokens, vocabulary V; B responses,
C audited chunks.

The published objective (``--objective likelihood``), over a step's B responses:

    L = − 1/B Σ_c π̂_c Σ_{t ∈ c} log π_θ(y_t)  +  β/B Σ_{t unaudited} KL(π_ref(·|s_t) ‖ π_θ(·|s_t))
    π̂_c = (k_c + α·π̄_c) / (N + α),   π̄_c = exp(mean_{t ∈ c} log π_θ(y_t)),   both constants

The drafts objective (``--objective drafts``):

    L = − 1/|F| Σ_forks Σ_i A_i · mean_{t ∈ d_i} log π_θ(d_i,t | c, d_i,<t)
        + β · mean_{t ∈ y} KL(π_θ(·|x,y<t) ‖ π_ref(·|x,y<t))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


def centred_advantages(
    rewards_GK: torch.Tensor,
    baseline: str,
    *,
    normalize: bool = False,
    eps: float = 1e-6,
    population: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Advantages (G, K) for G groups (forks, or prompts) of K samples each.

    ``group``: A = r − mean of the group's K rewards (docs/method.md, step 5; GRPO's baseline).
    ``batch``: A = r − mean of all G·K rewards, so a group whose samples all score low is
    pushed down as a whole; ``population`` = (mean, std) replaces this batch's own when the
    batch spans several processes. ``normalize`` divides by the same population's std (+ eps).
    """
    if baseline not in ("group", "batch"):
        raise ValueError(f"baseline must be 'group' or 'batch', got {baseline!r}")
    if rewards_GK.numel() == 0:
        return rewards_GK.clone()
    if baseline == "group":
        mean = rewards_GK.mean(-1, keepdim=True)
        std = rewards_GK.std(-1, unbiased=False, keepdim=True)
    else:
        if population is not None:
            mean, std = (torch.tensor(v, dtype=rewards_GK.dtype) for v in population)
        else:
            mean, std = rewards_GK.mean(), rewards_GK.std(unbiased=False)
    advantages = rewards_GK - mean
    return advantages / (std + eps) if normalize else advantages


def masked_mean(values_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    """Per-row mean over masked-in positions (N,); 0 for an empty row."""
    mask = mask_NT.to(values_NT.dtype)
    return (values_NT * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def policy_gradient_loss(
    logprobs_NT: torch.Tensor,
    mask_NT: torch.Tensor,
    advantages_N: torch.Tensor,
    *,
    normalizer: float,
    old_logprobs_NT: torch.Tensor | None = None,
    clip: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """−Σ_n A_n · mean_t(term_nt) / normalizer, the token-mean per sequence.

    Without ``old_logprobs_NT`` the term is log π_θ (REINFORCE). With them it is PPO's
    ``min(ρ A, clip(ρ, 1−ε, 1+ε) A) / A`` per token, ρ = exp(log π_θ − log π_old), so that
    extra epochs on the same samples stay near the sampling policy. ``normalizer`` is |F|
    (forks: each fork's K drafts are summed) or N (GRPO: every sample is averaged).
    """
    A_N1 = advantages_N.detach().to(logprobs_NT.dtype)[:, None]
    metrics: Metrics = {}
    if old_logprobs_NT is None:
        per_token_NT = A_N1 * logprobs_NT
    else:
        ratio_NT = torch.exp(logprobs_NT - old_logprobs_NT.detach())
        clipped_NT = ratio_NT.clamp(1.0 - clip, 1.0 + clip)
        per_token_NT = torch.minimum(ratio_NT * A_N1, clipped_NT * A_N1)
        m = mask_NT.bool()
        was_clipped = (ratio_NT * A_N1 > clipped_NT * A_N1)[m]
        metrics["clip_fraction"] = float(was_clipped.float().mean()) if m.any() else 0.0
        metrics["ratio_mean"] = float(ratio_NT.detach()[m].mean()) if m.any() else 1.0
    loss = -masked_mean(per_token_NT, mask_NT).sum() / normalizer
    metrics["pg_loss"] = float(loss.detach())
    return loss, metrics


def exact_kl(
    logits_NTV: torch.Tensor, ref_logits_NTV: torch.Tensor, mask_NT: torch.Tensor
) -> torch.Tensor:
    """KL(π_θ ‖ π_ref) (N, T) per position, summed over the vocabulary; 0 where masked out."""
    logp = F.log_softmax(logits_NTV.float(), dim=-1)
    logq = F.log_softmax(ref_logits_NTV.float(), dim=-1)
    kl_NT = (logp.exp() * (logp - logq)).sum(-1)
    return kl_NT * mask_NT.to(kl_NT.dtype)


def k3_kl(
    logprobs_NT: torch.Tensor, ref_logprobs_NT: torch.Tensor, mask_NT: torch.Tensor
) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) at the sampled tokens (N, T).

    With δ = log π_ref(y_t) − log π_θ(y_t) and y_t ~ π_θ: k3 = e^δ − δ − 1 ≥ 0, unbiased and
    low-variance, and it needs only the two sampled-token log-probs, not V logits.
    """
    delta_NT = ref_logprobs_NT.float() - logprobs_NT.float()
    k3_NT = torch.exp(delta_NT) - delta_NT - 1.0
    return k3_NT * mask_NT.to(k3_NT.dtype)


def kl_loss(kl_NT: torch.Tensor, *, beta: float, num_tokens: float) -> tuple[torch.Tensor, Metrics]:
    """β · Σ KL / num_tokens: the anchor's share of a token-mean over ``num_tokens`` tokens.

    Passing the whole step's token count (not this micro-batch's) lets micro-batches add up to
    the full-batch mean exactly.
    """
    kl_sum = kl_NT.sum()
    loss = beta * kl_sum / num_tokens
    return loss, {"kl": float(kl_sum.detach()) / num_tokens, "kl_loss": float(loss.detach())}


def cross_entropy_loss(
    logprobs_NT: torch.Tensor, mask_NT: torch.Tensor, *, num_tokens: float
) -> tuple[torch.Tensor, Metrics]:
    """SFT: −Σ log π(target tokens) / num_tokens, the token-mean negative log-likelihood."""
    nll = -(logprobs_NT * mask_NT.to(logprobs_NT.dtype)).sum() / num_tokens
    return nll, {"sft_loss": float(nll.detach())}


# -- the published objective -------------------------------------------------------------------


def likelihood_target(
    k_C: torch.Tensor,
    prior_mean_C: torch.Tensor,
    *,
    num_samples: int | torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """π̂_c = (k_c + α·π̄_c) / (N + α) per chunk (C,), detached: a weight, never a gradient path.

    ``k_C`` is the teacher's soft agreement count Σ_n φ(y_c, t_n) ∈ [0, N]; ``prior_mean_C`` is
    π̄_c ∈ (0, 1], the student's geometric-mean token probability on its own chunk (the
    Dirichlet-Multinomial prior mean); ``num_samples`` is N, or N_c (C,) per chunk (the
    continuations the teacher returned). The result lies in [0, 1].
    """
    k = k_C.detach().float()
    prior = prior_mean_C.detach().float()
    return ((k + alpha * prior) / (num_samples + alpha)).clamp(0.0, 1.0)


def chunk_prior_mean(logprobs_CL: torch.Tensor) -> torch.Tensor:
    """π̄_c = exp(mean_t log π_θ(y_t)) (C,) over each chunk's L tokens, detached."""
    return logprobs_CL.detach().float().mean(-1).exp()


def chunk_likelihood_loss(
    logprobs_BT: torch.Tensor, weight_BT: torch.Tensor, *, num_responses: float
) -> tuple[torch.Tensor, Metrics]:
    """−Σ_{b,t} w_bt · log π_θ(y_bt) / B: the chunk term, with w = π̂ of the chunk covering the
    token (0 on tokens no scored chunk covers). Its gradient on the logits of an audited token
    is −π̂·(onehot(y_t) − softmax)/B."""
    loss = -(weight_BT.detach().to(logprobs_BT.dtype) * logprobs_BT).sum() / num_responses
    return loss, {"chunk_loss": float(loss.detach())}


def outcome_weights(
    rewards_B: torch.Tensor, mean_reward: float, mask_BT: torch.Tensor, *, weight: float
) -> torch.Tensor:
    """(B, T) λ·(r_b − r̄) on every response token: added to the chunk term's weights, a
    REINFORCE term on the whole response with the step's mean reward as its baseline (this
    project's extension; KDRL combines a distillation loss with a rule-based reward the same
    way). A response better than the step's average is made likelier, a worse one less likely.
    """
    advantage_B = (rewards_B.float() - mean_reward) * weight
    return advantage_B.to(mask_BT.device)[:, None] * mask_BT.float()


def consensus_index(similarity_NN: list[list[float]]) -> int:
    """The continuation that agrees most with the others: the largest mean similarity to the
    other N − 1 (the first on a tie; 0 when there is only one)."""
    n = len(similarity_NN)
    if n < 2:
        return 0
    means = [(sum(row) - row[j]) / (n - 1) for j, row in enumerate(similarity_NN)]
    return max(range(n), key=lambda j: (means[j], -j))


def shaped_offpolicy_loss(
    logprobs_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    gamma: float,
    weight: float,
    num_responses: float,
) -> tuple[torch.Tensor, Metrics]:
    """−μ · Σ f(π_θ(t)) / B over the tokens of off-policy targets, f(p) = p / (p + γ).

    The target's behaviour probability is unknown (the teacher's text), so its importance ratio
    is π_θ / 1, shaped by f as LUFFY (arXiv 2504.14945) does in place of a clip: the gradient,
    μ·γ·p/(p + γ)² · ∇log π_θ, is largest for tokens the student finds unlikely but not
    vanishing, and bounded, so no token's ratio can blow up the step.
    """
    p_BT = logprobs_BT.exp()
    mask = mask_BT.to(logprobs_BT.dtype)
    loss = -weight * (p_BT / (p_BT + gamma) * mask).sum() / num_responses
    tokens = float(mask.sum())
    prob = float((p_BT.detach() * mask).sum()) / tokens if tokens else None
    return loss, {"mixed_loss": float(loss.detach()), "mixed_tokens": tokens, "mixed_prob": prob}


def forward_kl(logits_NV: torch.Tensor, ref_logits_NV: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) (N,) per position, exact over the vocabulary (float32)."""
    logp = F.log_softmax(logits_NV.float(), dim=-1)
    logq = F.log_softmax(ref_logits_NV.float(), dim=-1)
    return (logq.exp() * (logq - logp)).sum(-1)


def unaudited_kl_loss(
    kl_BT: torch.Tensor,
    unaudited_BT: torch.Tensor,
    *,
    beta: float,
    num_responses: float,
    num_unaudited: float,
) -> tuple[torch.Tensor, Metrics]:
    """β · Σ_{unaudited} KL / B: the anchor of the published objective, a sum over tokens
    divided by the number of responses (not by a token count that moves with the batch).

    ``num_unaudited`` (the step's, all ranks) only scales the reported mean KL per token."""
    kl_sum = (kl_BT * unaudited_BT.to(kl_BT.dtype)).sum()
    loss = beta * kl_sum / num_responses
    return loss, {
        "kl": float(kl_sum.detach()) / max(num_unaudited, 1.0),
        "kl_loss": float(loss.detach()),
    }
