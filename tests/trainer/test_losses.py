"""Step 6's pure functions against hand-computed values and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from omniopd.trainer.losses import (
    centred_advantages,
    cross_entropy_loss,
    exact_kl,
    k3_kl,
    kl_loss,
    masked_mean,
    policy_gradient_loss,
)


def test_group_advantages_centre_each_group():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    A = centred_advantages(r, "group")
    torch.testing.assert_close(A, torch.tensor([[0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_batch_advantages_centre_over_all_drafts():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    A = centred_advantages(r, "batch")
    mean = (2.0 + 0.8) / 8
    torch.testing.assert_close(A, r - mean)
    # A group where all drafts agree but score low is pushed down as a whole.
    assert (A[1] < 0).all()


def test_normalised_advantages():
    r = torch.tensor([[1.0, 0.0]])
    assert centred_advantages(r, "group", normalize=True, eps=0.0).tolist() == [[1.0, -1.0]]
    with pytest.raises(ValueError, match="baseline"):
        centred_advantages(r, "fork")


def test_masked_mean():
    v = torch.tensor([[1.0, 3.0, 100.0], [0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(v, m).tolist() == [2.0, 0.0]


def test_policy_gradient_by_hand():
    # Two forks, two drafts each: −1/|F| Σ_f Σ_i A_i · mean_t log π.
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0], [-0.5, -0.5], [-4.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
    A = torch.tensor([0.5, -0.5, 1.0, -1.0])
    loss, metrics = policy_gradient_loss(logp, mask, A, normalizer=2)
    expected = -(0.5 * -2.0 + -0.5 * -2.0 + 1.0 * -0.5 + -1.0 * -4.0) / 2
    assert loss.item() == pytest.approx(expected)
    assert metrics["pg_loss"] == pytest.approx(expected)
    loss.backward()
    # d loss / d logp_nt = −A_n / (|d_n| · |F|) on real tokens, 0 on padding.
    grad = torch.tensor([[-0.125, -0.125], [0.25, 0.0], [-0.25, -0.25], [0.5, 0.0]])
    torch.testing.assert_close(logp.grad, grad)


def test_ppo_clipped_ratio_by_hand():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # Positive advantage: ρ = 1.5 is clipped to 1.2 (no gradient), 0.5 and 1.1 are not.
    loss, m = policy_gradient_loss(
        new, mask, torch.tensor([2.0]), normalizer=1, old_logprobs_NT=old, clip=0.2
    )
    assert loss.item() == pytest.approx(-(2 * 1.2 + 2 * 0.5 + 2 * 1.1) / 3)
    assert m["clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, -2 * 0.5 / 3, -2 * 1.1 / 3]]))
    # Negative advantage: ρ = 0.5 is clipped to 0.8 (pessimistic), 1.5 is kept.
    new2 = new.detach().requires_grad_()
    loss2, _ = policy_gradient_loss(
        new2, mask, torch.tensor([-1.0]), normalizer=1, old_logprobs_NT=old
    )
    assert loss2.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)


def test_ppo_ratio_one_has_the_reinforce_gradient():
    logp = torch.randn(3, 4)
    mask = torch.rand(3, 4) > 0.3
    A = torch.randn(3)
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    policy_gradient_loss(a, mask, A, normalizer=3)[0].backward()
    policy_gradient_loss(b, mask, A, normalizer=3, old_logprobs_NT=logp)[0].backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_exact_kl_matches_torch_distributions():
    torch.manual_seed(0)
    p, q = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    expected = kl_divergence(Categorical(logits=p), Categorical(logits=q))
    torch.testing.assert_close(exact_kl(p, q, mask), expected)
    mask[1, 3:] = False
    out = exact_kl(p, q, mask)
    assert (out[1, 3:] == 0).all() and (out >= -1e-6).all()
    assert exact_kl(p, p, mask).abs().max() < 1e-6


def test_exact_kl_by_hand():
    p = torch.tensor([[[math.log(0.5), math.log(0.5)]]])
    q = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert exact_kl(p, q, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(expected)


def test_k3_by_hand_and_unbiased():
    # δ = log q − log p; k3 = e^δ − δ − 1.
    lp, lq = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    d = math.log(0.5)
    assert k3_kl(lp, lq, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(
        math.exp(d) - d - 1
    )
    # Averaged over samples from p it estimates KL(p ‖ q).
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(7), torch.randn(7)
    P, Q = Categorical(logits=p_logits), Categorical(logits=q_logits)
    y = P.sample((200_000,))
    est = k3_kl(
        P.log_prob(y)[None], Q.log_prob(y)[None], torch.ones(1, len(y), dtype=torch.bool)
    ).mean()
    assert est.item() == pytest.approx(kl_divergence(P, Q).item(), rel=0.03)


def test_kl_loss_adds_up_over_micro_batches():
    kl = torch.rand(4, 6)
    full, m = kl_loss(kl, beta=0.1, num_tokens=24)
    parts = (
        kl_loss(kl[:1], beta=0.1, num_tokens=24)[0] + kl_loss(kl[1:], beta=0.1, num_tokens=24)[0]
    )
    torch.testing.assert_close(full, parts)
    assert m["kl"] == pytest.approx(kl.mean().item())


def test_cross_entropy_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    loss, m = cross_entropy_loss(logp, mask, num_tokens=2)
    assert loss.item() == pytest.approx(1.5) and m["sft_loss"] == pytest.approx(1.5)
