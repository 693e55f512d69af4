"""The published objective's step 6 (trainer/losses.py, trainer/likelihood.py): the loss and its
gradient against a hand-computed oracle, the target, and the sliced forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from omniopd.trainer.losses import (
    chunk_likelihood_loss,
    chunk_prior_mean,
    consensus_index,
    forward_kl,
    likelihood_target,
    outcome_weights,
    shaped_offpolicy_loss,
    unaudited_kl_loss,
)
from omniopd.trainer.models import Batch, continuation_logits, token_logprobs
from omniopd.trainer.token_terms import token_terms


def test_target_is_the_smoothed_count():
    k = torch.tensor([8.0, 0.0, 3.5])
    prior = torch.tensor([0.5, 0.9, 1.0])
    got = likelihood_target(k, prior, num_samples=8, alpha=1.0)
    torch.testing.assert_close(got, torch.tensor([8.5 / 9, 0.9 / 9, 4.5 / 9]))
    # More prior strength pulls every chunk toward its own π̄.
    strong = likelihood_target(k, prior, num_samples=8, alpha=1e6)
    torch.testing.assert_close(strong, prior, atol=1e-4, rtol=0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10),
    st.floats(-30.0, 0.0),
    st.floats(0.01, 100.0),
)
def test_target_is_detached_and_in_the_unit_interval(phis, mean_logprob, alpha):
    n = len(phis)
    k = torch.tensor([sum(phis)], requires_grad=True)
    logprobs = torch.full((1, 4), mean_logprob, requires_grad=True)
    prior = chunk_prior_mean(logprobs)
    target = likelihood_target(k, prior, num_samples=n, alpha=alpha)
    assert not target.requires_grad and not prior.requires_grad
    assert 0.0 <= float(target) <= 1.0


def oracle_case():
    """Two short responses, V = 5: response 0 has 4 tokens, response 1 has 3 (one pad)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[1, 3, 0, 2], [4, 4, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    # C = 2: response 0 audited at 0..1 (π̂ = 0.7), response 1 at 1..2 (π̂ = 0.4).
    audited = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    weight = torch.tensor([[0.7, 0.7, 0.0, 0.0], [0.0, 0.4, 0.4, 0.0]], dtype=torch.float64)
    return logits, ref_logits, tokens, mask, audited, weight


def test_loss_and_gradient_match_the_hand_computed_oracle():
    logits, ref_logits, tokens, mask, audited, weight = oracle_case()
    logits.requires_grad_(True)
    beta, B = 0.1, 2.0
    unaudited = mask & ~audited
    logp = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) * mask
    chunk, _ = chunk_likelihood_loss(logp, weight, num_responses=B)
    kl, metrics = unaudited_kl_loss(
        forward_kl(logits, ref_logits).double(),
        unaudited,
        beta=beta,
        num_responses=B,
        num_unaudited=float(unaudited.sum()),
    )
    (chunk + kl).backward()

    p = F.softmax(logits.detach(), -1)
    q = F.softmax(ref_logits, -1)
    onehot = F.one_hot(tokens, 5).double()
    want_loss = 0.0
    want_grad = torch.zeros_like(logits)
    for b in range(2):
        for t in range(4):
            if audited[b, t]:
                want_loss += -weight[b, t] * torch.log(p[b, t, tokens[b, t]]) / B
                want_grad[b, t] = -weight[b, t] * (onehot[b, t] - p[b, t]) / B
            elif mask[b, t]:
                want_loss += beta * (q[b, t] * (q[b, t].log() - p[b, t].log())).sum() / B
                want_grad[b, t] = beta * (p[b, t] - q[b, t]) / B
    assert float((chunk + kl).detach()) == pytest.approx(float(want_loss), rel=1e-6)
    torch.testing.assert_close(logits.grad, want_grad)
    # The KL touches only unaudited tokens: audited and padding positions get no KL gradient.
    assert metrics["kl"] == pytest.approx(
        float((forward_kl(logits, ref_logits) * unaudited).sum() / unaudited.sum()), rel=1e-6
    )


def test_the_loss_is_a_sum_divided_by_the_number_of_responses():
    """Doubling the audited tokens doubles the chunk term: no per-token mean anywhere."""
    logp = torch.full((1, 4), -2.0)
    one, _ = chunk_likelihood_loss(logp, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), num_responses=1)
    two, _ = chunk_likelihood_loss(logp, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), num_responses=1)
    assert float(two) == pytest.approx(2 * float(one)) == pytest.approx(8.0)
    half, _ = chunk_likelihood_loss(logp, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), num_responses=2)
    assert float(half) == pytest.approx(4.0)


def batch_of(tokenizer, prompts: list[str], answers: list[str]) -> Batch:
    from omniopd.trainer.models import left_pad, right_pad

    p_ids, p_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    t_ids, t_mask = right_pad([tokenizer(a)["input_ids"] for a in answers], tokenizer.pad_token_id)
    return Batch(p_ids, p_mask, t_ids, t_mask)


def scoring_case(model_dir):
    """A reference that differs from the student, two responses, an audited span of the second
    (π̂ = 0.6) and the unaudited rest: what the update's terms are checked on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = batch_of(tokenizer, ["1+2=?", "12*3=?"], ["3.", "36 and more"])
    unaudited = batch.mask_BT.clone()
    unaudited[1, 2:5] = False
    weight = torch.zeros(batch.mask_BT.shape)
    weight[1, 2:5] = 0.6
    return ref, batch, unaudited, weight


@pytest.mark.parametrize("slice_tokens", [1, 3, 1024])
def test_sliced_terms_equal_the_whole_logits(tiny_student, tiny_teacher, slice_tokens):
    """token_terms through the LM head in slices (checkpointed) = the full-logits computation,
    values and gradients, at a temperature other than 1."""

    model = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    ref, batch, unaudited, weight = scoring_case(tiny_student)

    logp, kl = token_terms(model, ref, batch, temperature=0.7, slice_tokens=slice_tokens)
    loss = -(weight * logp).sum() + 0.1 * (kl * unaudited).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    logits = continuation_logits(model, batch, 0.7)
    with torch.no_grad():
        ref_logits = continuation_logits(ref, batch, 0.7)
    want_logp = token_logprobs(logits, batch.tokens_BT) * batch.mask_BT
    want_kl = forward_kl(logits, ref_logits) * batch.mask_BT
    (-(weight * want_logp).sum() + 0.1 * (want_kl * unaudited).sum()).backward()
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl, want_kl, atol=1e-5, rtol=1e-5)
    assert float(kl[batch.mask_BT].min()) > 0 and float(kl[~batch.mask_BT].abs().max()) == 0
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_without_a_reference_the_kl_is_zero(tiny_student):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    model = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    batch = batch_of(tokenizer, ["1+2=?"], ["3."])
    logp, kl = token_terms(model, None, batch, temperature=1.0)
    assert float(kl.abs().sum()) == 0 and float(logp[batch.mask_BT].max()) < 0


def test_a_model_whose_logits_are_not_the_heads_output_is_scored_by_its_logits(tiny_student):
    """Scaling or soft-capping after the LM head (Granite, Cohere, Gemma): the sliced path would
    score another distribution, so token_terms uses the model's own logits."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from omniopd.trainer.token_terms import head_gives_logits

    class Capped(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 2.0  # as Granite divides by its logits_scaling
            return out

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    plain = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    capped = Capped.from_pretrained(tiny_student).eval()
    assert head_gives_logits(plain) and not head_gives_logits(capped)
    batch = batch_of(tokenizer, ["1+2=?"], ["3 and 4."])
    logp, _ = token_terms(capped, None, batch, temperature=1.0)
    want = token_logprobs(continuation_logits(capped, batch, 1.0), batch.tokens_BT) * batch.mask_BT
    torch.testing.assert_close(logp, want)


def test_checkpointed_layers_give_the_same_terms_and_gradients(tiny_student, toy_world):
    """--gradient-checkpointing: decoder layers recomputed in the backward pass give the values
    and gradients of kept activations, through the trainer's two backward passes (the KL's
    with the graph kept, then the chunk term); the layers are really recomputed; evaluation
    leaves the student checkpointed; the submodules stay in eval mode (no dropout)."""
    from transformers import AutoTokenizer

    from omniopd.evaluation import evaluate
    from omniopd.trainer.models import checkpoint_layers

    plain = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    kept = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    assert checkpoint_layers(kept) == kept.config.num_hidden_layers
    ref, batch, unaudited, weight = scoring_case(tiny_student)

    def run(model) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        calls = 0  # MLP forward calls (a recomputation does not run forward hooks)

        def counted(forward):
            def run(*args, **kwargs):
                nonlocal calls
                calls += 1
                return forward(*args, **kwargs)

            return run

        for layer in model.model.layers:
            layer.mlp.forward = counted(layer.mlp.forward)
        logp, kl = token_terms(model, ref, batch, temperature=0.7)
        (0.1 * (kl * unaudited).sum()).backward(retain_graph=True)
        (-(weight * logp).sum()).backward()
        for layer in model.model.layers:
            del layer.mlp.forward
        return logp.detach(), [p.grad.clone() for p in model.parameters()], calls

    want_logp, want_grads, plain_calls = run(plain)
    logp, grads, kept_calls = run(kept)
    assert kept_calls > plain_calls  # recomputed in the backward passes
    torch.testing.assert_close(logp, want_logp)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    student = AutoModelForCausalLM.from_pretrained(toy_world.student).eval()
    checkpoint_layers(student)
    rows = [{"prompt": "1+2=?", "answer": "#### 3"}]
    toy_tokenizer = AutoTokenizer.from_pretrained(toy_world.student)
    evaluate(student, toy_tokenizer, rows, max_new_tokens=4, batch_size=1, sampled=False)
    layers = list(student.model.layers)
    assert all(layer.training for layer in layers)
    assert not student.training
    assert not any(m.training for layer in layers for m in layer.modules() if m is not layer)


def test_outcome_weights_are_the_centred_reward_on_every_response_token():
    """--outcome-weight λ: λ·(r_b − r̄) on each of response b's tokens, 0 on padding; added to
    π̂ it makes a right answer likelier and a wrong one less likely."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    w = outcome_weights(torch.tensor([1.0, 0.0, 1.0]), 2 / 3, mask, weight=0.6)
    want = torch.tensor([[0.2, 0.2, 0.0], [-0.4, -0.4, -0.4], [0.2, 0.0, 0.0]])
    torch.testing.assert_close(w, want)
    logp = torch.tensor([[-1.0, -2.0, -3.0]] * 3, requires_grad=True)
    loss, _ = chunk_likelihood_loss(logp, w, num_responses=3)
    loss.backward()
    assert float(logp.grad[0, 0]) < 0 < float(logp.grad[1, 0])  # descent raises right, lowers wrong


def test_the_consensus_is_the_continuation_closest_to_the_others():
    """--mixed-weight: among N continuations, the one with the largest mean similarity to the
    other N − 1 (its own diagonal left out); the first on a tie."""
    sim = [[1.0, 0.2, 0.3], [0.2, 1.0, 0.9], [0.3, 0.9, 1.0]]
    assert consensus_index(sim) == 2  # means 0.25, 0.55, 0.6
    assert consensus_index([[1.0, 0.5], [0.5, 1.0]]) == 0
    assert consensus_index([[1.0]]) == 0


def test_the_off_policy_term_is_shaped_by_p_over_p_plus_gamma():
    """LUFFY's shaping of an off-policy target: loss −μ Σ p/(p+γ) / B, gradient with respect to
    log p equal to −μ γ p / (p+γ)² / B on target tokens, 0 on padding."""
    logp = torch.log(torch.tensor([[0.5, 0.01, 0.3]])).requires_grad_(True)
    mask = torch.tensor([[True, True, False]])
    loss, m = shaped_offpolicy_loss(logp, mask, gamma=0.1, weight=2.0, num_responses=4)
    p = torch.tensor([0.5, 0.01])
    assert float(loss) == pytest.approx(float(-2.0 * (p / (p + 0.1)).sum() / 4))
    loss.backward()
    want = -2.0 * 0.1 * p / (p + 0.1) ** 2 / 4
    torch.testing.assert_close(logp.grad[0, :2], want)
    assert float(logp.grad[0, 2]) == 0 and m["mixed_tokens"] == 2
    assert m["mixed_prob"] == pytest.approx(0.255)
