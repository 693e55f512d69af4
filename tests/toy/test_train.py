"""The toy models' supervised step: micro-batches keep the gradient; recipes keep their hashes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omniopd.toy import build_tiny
from omniopd.toy.recipe import CHAIN, TINY_CHAIN, ModelSpec, Recipe
from omniopd.toy.task import read_jsonl
from omniopd.toy.train import backward_batch, encode_rows


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny-chain"), TINY_CHAIN)


def gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_micro_batches_give_the_one_batch_gradient(tiny_chain):
    # The char model on chain rows: lengths differ by tens of tokens, so padding differs.
    tokenizer = AutoTokenizer.from_pretrained(tiny_chain.teacher_char)
    model = AutoModelForCausalLM.from_pretrained(tiny_chain.teacher_char)
    data = encode_rows(tokenizer, list(read_jsonl(tiny_chain.train))[:12])
    index = list(range(12))
    assert len({len(row) for row in data.ids}) > 6

    results = {}
    for k in (1, 3, 4):
        model.zero_grad(set_to_none=True)
        loss, tokens = backward_batch(model, data, index, tokenizer.pad_token_id, k)
        results[k] = (loss, tokens, gradients(model))
    loss_1, tokens_1, grad_1 = results[1]
    assert tokens_1 == sum(len(row) for row in data.ids)  # real tokens, never padding
    for k in (3, 4):
        loss_k, tokens_k, grad_k = results[k]
        assert tokens_k == tokens_1
        assert loss_k == pytest.approx(loss_1, rel=1e-5)
        assert float((grad_k - grad_1).norm() / grad_1.norm()) < 1e-5


def test_micro_batches_enter_the_hash_only_when_used():
    # The shipped worlds keep the hashes their results were measured on.
    assert (Recipe().hash(), CHAIN.hash()) == ("8036efc47368", "c3cbc833df97")
    assert "micro_batches" not in Recipe().to_dict()["teacher"]
    assert CHAIN.to_dict()["teacher_char"]["micro_batches"] == 4
    arith = Recipe()
    split = replace(arith, teacher_char=replace(arith.teacher_char, micro_batches=4))
    assert split.to_dict()["teacher_char"]["micro_batches"] == 4
    assert split.hash() != arith.hash()
    with pytest.raises(ValueError, match="micro_batches"):
        ModelSpec(hidden=8, layers=1, heads=1, intermediate=8, tokenizer="bpe", batch_size=4,
                  micro_batches=5)  # fmt: skip
