"""Tokenizers and chat template: exact round trips, digits one per token, the prefix contract."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from omniopd.toy.task import make_splits
from omniopd.toy.text import EOS, char_tokenizer, render_prefix, train_bpe_tokenizer

TEXTS = [
    "48*2=96. 37+96=133. #### 133",
    "Q: 37+48*2=?",
    "  spaces,\ttabs\nand newlines  ",
    "héllo ∑ 日本 🙂",
]


@pytest.fixture(scope="module")
def bpe():
    s = make_splits(0, 2000, 0, 0)
    return train_bpe_tokenizer([t for p in s.train for t in (p.prompt, p.answer)], 320, 96)


@pytest.fixture(scope="module")
def char():
    return char_tokenizer(96)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(bpe, char, text):
    for tok in (bpe, char):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_digits_are_single_tokens(bpe, char):
    for tok in (bpe, char):
        pieces = tok.convert_ids_to_tokens(tok("9701 + 38", add_special_tokens=False)["input_ids"])
        assert [p for p in pieces if any(c.isdigit() for c in p)] == list("970138")


def test_bpe_merges_the_rest_and_char_does_not(bpe, char):
    text = "37+96=133. #### 133"
    n_bpe = len(bpe(text, add_special_tokens=False)["input_ids"])
    n_char = len(char(text, add_special_tokens=False)["input_ids"])
    assert n_char == len(text) and n_bpe < n_char


def test_the_two_vocabularies_differ(bpe, char):
    assert bpe.get_vocab() != char.get_vocab()
    assert (
        bpe("Q: 1+2", add_special_tokens=False)["input_ids"]
        != char("Q: 1+2", add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("which", ["bpe", "char"])
def test_chat_template_shape_and_prefix_contract(bpe, char, which, tmp_path):
    saved = {"bpe": bpe, "char": char}[which]
    saved.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # as the gateway and trainer load it
    assert tok.eos_token == EOS and tok.pad_token is not None and tok.chat_template
    messages = [{"role": "user", "content": "Q: 37+48*2=?"}]
    prefix = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prefix == "<|user|>Q: 37+48*2=?<|assistant|>" == render_prefix(tok, "Q: 37+48*2=?")
    answer = "48*2=96. 37+96=133. #### 133"
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    assert full == prefix + answer + tok.eos_token
    # The prefix tokenises the same whether or not an answer follows it.
    ids_prefix = tok(prefix, add_special_tokens=False)["input_ids"]
    ids_full = tok(full, add_special_tokens=False)["input_ids"]
    assert ids_full[: len(ids_prefix)] == ids_prefix
    assert ids_full[-1] == tok.eos_token_id
    assert tok.decode(ids_full[len(ids_prefix) : -1]) == answer


def test_unknown_role_is_an_error(char):
    with pytest.raises(Exception, match="unknown role tool"):
        char.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
