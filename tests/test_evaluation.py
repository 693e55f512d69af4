"""``omniopd.evaluation``: batched decoding, the figures, and the ``omniopd-eval`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omniopd.answers import read_jsonl
from omniopd.evaluation import decode, evaluate, repeats
from omniopd.toy import ToyWorld, build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ToyWorld:
    return build_tiny(tmp_path_factory.mktemp("eval-world"))


@pytest.fixture(scope="module")
def teacher(tiny: ToyWorld):
    return AutoModelForCausalLM.from_pretrained(tiny.teacher), AutoTokenizer.from_pretrained(
        tiny.teacher
    )


def test_repeats():
    assert repeats([1, 2, 3, 4] * 3)
    assert not repeats([1, 2, 3, 4] * 2)
    assert not repeats(list(range(50)))
    assert not repeats([])


def test_batching_and_left_padding_do_not_change_greedy_answers(tiny, teacher):
    model, tok = teacher
    prompts = [*[r["prompt"] for r in read_jsonl(tiny.eval)][:12], "Q: 1=?", "Q: 99*9+99=?"]
    one = decode(model, tok, prompts, max_new_tokens=12, batch_size=1)
    many = decode(model, tok, prompts, max_new_tokens=12, batch_size=8)
    assert one.tokens == many.tokens and one.texts == many.texts


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny, teacher):
    model, tok = teacher
    prompts = [r["prompt"] for r in read_jsonl(tiny.eval)][:16]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = decode(model, tok, prompts, max_new_tokens=8, batch_size=8, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    b = decode(model, tok, prompts, max_new_tokens=8, batch_size=8, temperature=1.0, seed=5)
    c = decode(model, tok, prompts, max_new_tokens=8, batch_size=8, temperature=1.0, seed=6)
    greedy = decode(model, tok, prompts, max_new_tokens=8, batch_size=8)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens and a.tokens != greedy.tokens


def test_evaluate_figures_and_training_mode(tiny, teacher):
    model, tok = teacher
    rows = list(read_jsonl(tiny.eval))[:10]
    model.train()
    result = evaluate(model, tok, rows, max_new_tokens=6, batch_size=4)
    assert model.training  # restored
    assert result.n == 10 and len(result.greedy) == len(result.sampled) == 10
    # A random model never writes "####": no right answers, and 6 tokens never reach eos here.
    assert result.accuracy_greedy == 0.0 and result.accuracy_sampled == 0.0
    greedy = decode(model, tok, [r["prompt"] for r in rows], max_new_tokens=6, batch_size=4)
    assert result.greedy == greedy.texts
    assert result.truncated_rate == sum(not e for e in greedy.ended) / 10
    assert result.repetition_rate == sum(repeats(t) for t in greedy.tokens) / 10
    assert result.mean_response_tokens == sum(len(t) for t in greedy.tokens) / 10
    greedy_only = evaluate(model, tok, rows, max_new_tokens=6, batch_size=4, sampled=False)
    assert greedy_only.accuracy_sampled is None and greedy_only.sampled == []
    assert greedy_only.greedy == result.greedy


def test_bad_arguments_are_named(teacher):
    model, tok = teacher
    with pytest.raises(ValueError, match="rows is empty"):
        evaluate(model, tok, [], max_new_tokens=4, batch_size=2)
    with pytest.raises(ValueError, match="batch_size and max_new_tokens must be >= 1"):
        decode(model, tok, ["Q: 1=?"], max_new_tokens=4, batch_size=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        decode(model, tok, ["Q: 1=?"], max_new_tokens=4, batch_size=1, temperature=-1)


def test_cli_prints_a_table_then_json(tiny):
    done = subprocess.run(
        [
            sys.executable, "-m", "omniopd.evaluation",
            "--model", str(tiny.student), "--data", str(tiny.eval),
            "--limit", "7", "--batch-size", "4", "--max-new-tokens", "8", "--device", "cpu",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("accuracy_greedy") for line in lines[:-1])  # the table
    figures = json.loads(lines[-1])
    assert figures["n"] == 7
    for key in ("accuracy_greedy", "accuracy_sampled", "repetition_rate", "truncated_rate"):
        assert 0.0 <= figures[key] <= 1.0, key


def test_cli_rejects_a_bad_limit(tiny):
    done = subprocess.run(
        [sys.executable, "-m", "omniopd.evaluation", "--model", str(tiny.student),
         "--data", str(tiny.eval), "--limit", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "--limit must be >= 1" in done.stderr
