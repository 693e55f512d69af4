"""Steps 1 and 3: the KV-cached sampler agrees with a plain forward pass, row by row."""

from __future__ import annotations

import math

import pytest
import torch

from omniopd.trainer.drafts import draft_texts, is_unanimous, make_drafts
from omniopd.trainer.models import (
    Batch,
    continuation_logits,
    load_model,
    load_tokenizer,
    token_logprobs,
)
from omniopd.trainer.rollout import rollout

PROMPTS = ["1+2=", "12+34=", "a", "99*99=?"]


@pytest.fixture(scope="module")
def student(tiny_student):
    return load_model(str(tiny_student), torch.device("cpu"), torch.float32), load_tokenizer(
        str(tiny_student)
    )


def encode(tokenizer, prompts):
    return [tokenizer(p)["input_ids"] for p in prompts]


def score_alone(model, prefix: list[int], tokens: list[int], temperature: float):
    """Log-probs and entropies of ``tokens`` after ``prefix``, one unpadded row, no cache."""
    batch = Batch(
        torch.tensor([prefix]),
        torch.ones(1, len(prefix), dtype=torch.bool),
        torch.tensor([tokens]),
        torch.ones(1, len(tokens), dtype=torch.bool),
    )
    with torch.no_grad():
        logits = continuation_logits(model, batch, temperature)
    logp = torch.log_softmax(logits, -1)
    return token_logprobs(logits, batch.tokens_BT)[0], -(logp.exp() * logp).sum(-1)[0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_matches_unpadded_forward(student, temperature):
    model, tokenizer = student
    torch.manual_seed(0)
    eos = list(range(10, 20))  # many "EOS" ids so rows end at different lengths
    r = rollout(
        model,
        encode(tokenizer, PROMPTS),
        max_new_tokens=12,
        temperature=temperature,
        eos_ids=eos,
        pad_id=tokenizer.pad_token_id,
    )
    assert r.response_ids_BT.shape[0] == len(PROMPTS)
    for b, prompt in enumerate(encode(tokenizer, PROMPTS)):
        n = int(r.response_mask_BT[b].sum())
        tokens = r.response_ids_BT[b, :n].tolist()
        assert r.response_mask_BT[b, :n].all() and not r.response_mask_BT[b, n:].any()
        assert (r.response_ids_BT[b, n:] == tokenizer.pad_token_id).all()
        ended = tokens[-1] in eos
        assert bool(r.truncated_B[b]) == (not ended)
        assert not any(t in eos for t in tokens[:-1]), "a row continued past its EOS"
        logp, entropy = score_alone(model, prompt, tokens, temperature)
        torch.testing.assert_close(r.samples.logprobs_BT[b, :n], logp, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(r.entropy_BT[b, :n], entropy, atol=1e-4, rtol=1e-4)
        assert (r.entropy_BT[b, n:] == 0).all() and (r.samples.logprobs_BT[b, n:] == 0).all()


def test_min_new_tokens_holds_eos_back(student):
    model, tokenizer = student
    torch.manual_seed(1)
    r = rollout(
        model,
        encode(tokenizer, PROMPTS),
        max_new_tokens=20,
        temperature=1.0,
        eos_ids=list(range(4, 40)),
        pad_id=tokenizer.pad_token_id,
        min_new_tokens=20,
    )
    assert r.response_mask_BT.all() and r.truncated_B.all()
    assert not torch.isin(r.response_ids_BT, torch.arange(4, 40)).any()
    torch.manual_seed(1)
    r = rollout(
        model,
        encode(tokenizer, PROMPTS),
        max_new_tokens=20,
        temperature=1.0,
        eos_ids=list(range(4, 40)),
        pad_id=tokenizer.pad_token_id,
        min_new_tokens=3,
    )
    lengths = r.response_lengths()
    assert min(lengths) >= 4 and min(lengths) < 20  # EOS allowed from the 4th token on
    assert not torch.isin(r.response_ids_BT[:, :3], torch.arange(4, 40)).any()


def test_drafts_own_chunk_and_fresh_samples_from_the_fork_context(student):
    model, tokenizer = student
    torch.manual_seed(2)
    eos = list(range(10, 13))
    prompts = encode(tokenizer, PROMPTS)
    r = rollout(model, prompts, max_new_tokens=16, temperature=1.0, eos_ids=eos, pad_id=0)
    lengths = r.response_lengths()
    forks = [[0, max(0, n - 2)] if n > 2 else [0] for n in lengths]
    K, L = 3, 4
    d = make_drafts(
        model, r, forks, num_drafts=K, chunk_tokens=L, temperature=1.0, eos_ids=eos, pad_id=0
    )
    assert d.num_forks == sum(len(f) for f in forks)
    assert d.tokens_FKL.shape == (d.num_forks, K, L)
    for i, (b, f) in enumerate(zip(d.row_F, d.position_F, strict=True)):
        own = r.response_ids_BT[b, f : f + L][r.response_mask_BT[b, f : f + L]]
        assert d.tokens_FKL[i, 0][d.mask_FKL[i, 0]].tolist() == own.tolist()
        context = prompts[b] + r.response_ids_BT[b, :f].tolist()
        assert d.context_ids_FC[i][d.context_mask_FC[i]].tolist() == context
        for k in range(K):
            chunk = d.tokens_FKL[i, k][d.mask_FKL[i, k]].tolist()
            assert chunk, "a draft is never empty"
            assert not any(t in eos for t in chunk[:-1]), "a draft continued past EOS"
            assert len(chunk) == L or chunk[-1] in eos
            logp, _ = score_alone(model, context, chunk, 1.0)
            torch.testing.assert_close(
                d.logprobs_FKL[i, k, : len(chunk)], logp, atol=1e-4, rtol=1e-4
            )
    # The flattened batch scores the same tokens: one sequence per (fork, draft).
    batch = d.as_batch()
    assert len(batch) == d.num_forks * K
    with torch.no_grad():
        logp = token_logprobs(continuation_logits(model, batch, 1.0), batch.tokens_BT)
    torch.testing.assert_close(
        logp * batch.mask_BT, d.logprobs_FKL.flatten(0, 1), atol=1e-4, rtol=1e-4
    )
    partials, texts = draft_texts(tokenizer, r, d)
    assert len(partials) == len(texts) == d.num_forks
    assert all(len(t) == K for t in texts)


def test_unanimous():
    assert is_unanimous(["ab", "ab", "ab"])
    assert not is_unanimous(["ab", "ab", "a b"])


def test_entropy_is_bounded_by_log_vocab(student):
    model, tokenizer = student
    torch.manual_seed(3)
    r = rollout(
        model, encode(tokenizer, PROMPTS), max_new_tokens=5, temperature=1.0, eos_ids=[2], pad_id=0
    )
    assert (r.entropy_BT >= 0).all()
    assert (r.entropy_BT <= math.log(len(tokenizer)) + 1e-5).all()
