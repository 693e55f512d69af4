"""The ``hf`` provider on the toy teacher (``omniopd.toy.build_tiny``), loaded with from_pretrained.

Its samples are checked against ``transformers``' own ``generate``; one prefill for ``n`` samples
is checked by watching the model's inputs; the event loop is checked to stay free while a
model computes. Also: a ``vllm`` teacher without vLLM installed fails at start, clearly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omniopd.gateway.config import TeacherConfig, parse_config
from omniopd.gateway.core import StartupError
from omniopd.gateway.providers.base import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.hf import HFProvider, first_stop, sample_next
from omniopd.gateway.server import create_server

from .gwtools import hf_teacher, request, serving, toy_teacher_dir

QUESTION = "What is 17 + 25?"


def params(partial: str = "", **fields) -> SampleParams:
    base = {"n": 1, "max_tokens": 12, "temperature": 0.0, "top_p": 1.0}
    return SampleParams((Message("user", QUESTION),), partial, **(base | fields))


@pytest.fixture(scope="module")
def teacher_dir():
    return toy_teacher_dir()


@pytest.fixture
async def provider(teacher_dir):
    p = HFProvider(TeacherConfig(name="toy", provider="hf", model=str(teacher_dir)))
    await p.start()
    yield p
    await p.aclose()


@pytest.fixture(scope="module")
def reference(teacher_dir):
    """The same weights and tokenizer, driven by transformers' own generate."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()

    def greedy(partial: str, max_tokens: int) -> tuple[str, int, int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text + partial, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(
            ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        new = out[0, ids.shape[1] :].tolist()
        return tokenizer.decode(new, skip_special_tokens=True), len(new), ids.shape[1]

    return greedy


@pytest.mark.parametrize("partial", ["", "17 + 25 = 4"])
async def test_greedy_samples_match_transformers_generate(provider, reference, partial):
    result = await provider.sample(params(partial, n=3, max_tokens=16), timeout=30)
    text, new_tokens, prompt_tokens = reference(partial, 16)
    assert text or not partial  # (the random toy teacher starts an answer with a special token)
    assert [c.text for c in result.chunks] == [text] * 3  # the continuation only
    assert all(c.output_tokens == new_tokens for c in result.chunks)
    assert result.input_tokens == prompt_tokens == provider.estimate_input_tokens(params(partial))
    assert result.output_tokens == 3 * new_tokens
    assert result.continuation == "prefill" and provider.supports_continuation


async def test_n_samples_share_one_prefill(provider):
    seen: list[tuple[int, ...]] = []
    embed = provider.model.get_input_embeddings()
    hook = embed.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        result = await provider.sample(params(n=8, max_tokens=6, temperature=1.0), timeout=30)
    finally:
        hook.remove()
    prompt_tokens = result.input_tokens
    assert seen[0] == (1, prompt_tokens)  # the prompt runs once, for one row
    assert all(shape[1] == 1 and shape[0] <= 8 for shape in seen[1:])  # then one token a step
    # ... for all eight samples at once, less those whose first sampled token already ended them
    # (a finished row leaves the batch; at temperature 1 a sample may stop at once).
    ended_at_first_token = sum(1 for chunk in result.chunks if chunk.output_tokens <= 1)
    if ended_at_first_token < 8:
        assert seen[1][0] == 8 - ended_at_first_token
    assert len(result.chunks) == 8


async def test_seeds_make_samples_reproducible(provider):
    a = await provider.sample(params(n=4, temperature=1.0, seed=11), timeout=30)
    b = await provider.sample(params(n=4, temperature=1.0, seed=11), timeout=30)
    c = await provider.sample(params(n=4, temperature=1.0, seed=12), timeout=30)
    assert a == b
    assert [x.text for x in a.chunks] != [x.text for x in c.chunks]


async def test_stop_strings_end_a_sample_and_are_not_returned(provider):
    sampling = {"max_tokens": 24, "temperature": 1.0, "seed": 5}
    full = (await provider.sample(params(**sampling), timeout=30)).chunks[0]
    assert len(full.text) > 4
    stop = full.text[3:5]
    cut = await provider.sample(params(**sampling, stop=(stop,)), timeout=30)
    chunk = cut.chunks[0]
    assert chunk.text == full.text[: full.text.find(stop)]
    assert chunk.finish_reason == "stop" and chunk.output_tokens < full.output_tokens


async def test_max_tokens_ends_with_length(provider):
    result = await provider.sample(params(n=2, max_tokens=3, temperature=1.0, seed=0), timeout=30)
    for chunk in result.chunks:
        if chunk.finish_reason == "length":
            assert chunk.output_tokens == 3
        else:  # a random model may end at once with end-of-sequence
            assert chunk.finish_reason == "stop" and chunk.output_tokens <= 3


async def test_a_prompt_past_the_context_is_a_bad_request(provider):
    too_long = params(partial="1 + " * 200)
    with pytest.raises(ProviderError) as info:
        await provider.sample(too_long, timeout=30)
    assert info.value.kind is ErrorKind.BAD_REQUEST and "context" in info.value.message


async def test_a_call_past_its_time_stops(provider):
    with pytest.raises(ProviderError) as info:
        await provider.sample(params(n=8, max_tokens=60, temperature=1.0), timeout=0.0001)
    assert info.value.kind is ErrorKind.TIMEOUT


def test_nucleus_sampling_keeps_the_smallest_set_over_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, 1.0, 0.75, g)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 >= 0.75: the tail never appears
    assert {int(sample_next(logits, 1.0, 1.0, g)) for _ in range(500)} == {0, 1, 2, 3}
    assert int(sample_next(logits, 0.0, 1.0, g)) == 0  # temperature 0: greedy
    assert first_stop("a.b;c", (";", ".")) == 1 and first_stop("abc", ("x",)) == -1


async def test_the_loop_stays_free_while_the_model_computes(teacher_dir):
    config = {"teachers": [hf_teacher(max_n=16, max_tokens=60)]}
    async with serving(config) as gw:
        await gw.stub.SampleChunks(request("toy", content="1+1?", max_tokens=2))  # cache it
        slow = asyncio.ensure_future(
            gw.stub.SampleChunks(request("toy", n=16, max_tokens=60, temperature=1.0, cache=False))
        )
        await asyncio.sleep(0.05)
        started = time.monotonic()
        hit = await gw.stub.SampleChunks(request("toy", content="1+1?", max_tokens=2))
        waited = time.monotonic() - started
        assert hit.cached and not slow.done()
        assert waited < 0.1, waited
        reply = await slow
        assert len(reply.chunks) == 16 and reply.usage.input_tokens > 0


async def test_a_vllm_teacher_without_vllm_fails_at_start_saying_how_to_install():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; this test checks the message shown without it")
    import omniopd.gateway.providers.vllm  # noqa: F401 - importable without vLLM

    config = parse_config({"teachers": [{"name": "v", "provider": "vllm", "model": "m"}]})
    with pytest.raises(StartupError) as info:
        await create_server(config, "127.0.0.1:0")
    assert "teacher 'v'" in str(info.value) and "pip install 'omniopd[vllm]'" in str(info.value)


async def test_an_hf_teacher_that_cannot_load_fails_at_start(tmp_path):
    config = parse_config({"teachers": [hf_teacher(model=str(tmp_path / "missing"))]})
    with pytest.raises(StartupError, match="teacher 'toy'"):
        await create_server(config, "127.0.0.1:0")


async def test_an_unreadable_model_fails_at_start_saying_permission_and_path(
    teacher_dir, monkeypatch
):
    """A model folder saved 0600 by another user (the toy world before it was made readable,
    mounted into an image that runs as uid 1000): the start-up error says permission denied and
    names the file, not "No such file or directory". The tests run as root, who reads anything,
    so the gateway is made to see itself as uid 1000 (its identity, not the code under test)."""
    folder = Path(tempfile.mkdtemp(prefix="omniopd-unreadable-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        model = Path(shutil.copytree(teacher_dir, folder / "teacher"))
        (model / "model.safetensors").chmod(0o600)
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setattr(os, "getegid", lambda: 1000)
        monkeypatch.setattr(os, "getgroups", lambda: [1000])
        config = parse_config({"teachers": [hf_teacher(model=str(model))]})
        with pytest.raises(StartupError) as info:
            await create_server(config, "127.0.0.1:0")
        message = str(info.value)
        assert "teacher 'toy'" in message and "permission denied (mode 600" in message
        assert str(model / "model.safetensors") in message
    finally:
        shutil.rmtree(folder)


async def test_unknown_teacher_through_the_gateway_lists_the_known(teacher_dir):
    async with serving({"teachers": [hf_teacher()]}) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.SampleChunks(request("nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "toy" in info.value.details()


async def test_a_character_cut_by_max_tokens_is_not_returned_as_replacement_marks(provider):
    # The toy tokenizer is byte-level: a sample cut mid-character decodes to U+FFFD at the end.
    for seed in range(20):
        result = await provider.sample(
            params(n=8, max_tokens=5, temperature=1.0, seed=seed), timeout=30
        )
        for chunk in result.chunks:
            if chunk.finish_reason == "length":
                assert not chunk.text.endswith("\ufffd")
