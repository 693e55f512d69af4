"""Tiny random models for the trainer's unit tests, saved and loaded as users load them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARS = list("0123456789+-*=? abcdefghijklmnopqrstuvwxyz\n.")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, plus pad/bos/eos/unk."""
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def build_tiny_llama(out_dir: Path, seed: int, hidden: int = 32) -> Path:
    """A randomly initialised 2-layer Llama with the char tokenizer, via save_pretrained."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("student"), seed=0)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("teacher"), seed=1, hidden=48)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    """The toy world's tiny random models (bpe student/teacher, char teacher) and data."""
    from omniopd.toy import build_tiny

    return build_tiny(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def stack(toy_world, tmp_path_factory):
    """Real ``omniopd-gateway`` and ``omniopd-verifier`` processes, started by ``omniopd-stack``.

    Gateway teachers: ``toy`` (hf, the toy teacher) and ``dead`` (an OpenAI-compatible
    backend on a port where nothing listens, so every request fails). The verifier runs
    all-MiniLM-L6-v2 on the CPU; no Redis. Yields (gateway host:port, verifier URL).
    """
    from omniopd.stack import Stack, StackConfig

    from .stack import service_env

    config = {
        "teachers": [
            {
                "name": "toy",
                "provider": "hf",
                "model": str(toy_world.teacher),
                "max_tokens": 64,
                "device": os.environ.get("OMNIOPD_TEST_DEVICE", "cpu"),
            },
            {
                "name": "dead",
                "provider": "openai_completions",
                "model": "nothing",
                "base_url": "http://127.0.0.1:9/v1",
                "tokenizer": str(toy_world.teacher),
                "max_retries": 0,
                "timeout_s": 2,
            },
        ]
    }
    folder = tmp_path_factory.mktemp("stack")
    teachers = folder / "teachers.yaml"
    teachers.write_text(yaml.safe_dump(config))
    services = StackConfig(
        teachers=teachers,
        redis=False,
        verifier_device="cpu",
        env=service_env(),
        log_dir=folder / "logs",
        startup_timeout_s=180,
    )
    with Stack(services) as running:
        yield running.gateway, running.verifier


@pytest.fixture(scope="session")
def gateway(stack) -> str:
    return stack[0]


@pytest.fixture(scope="session")
def verifier(stack) -> str:
    return stack[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a loaded two-core machine OpenMP's
    spinning threads make them many times slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
