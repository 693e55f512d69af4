"""The ``openai_completions`` provider (raw prompt rendered with the teacher's chat template,
``/v1/completions`` with ``n``), against two servers. It posts through its own pooled client with
the official ``openai`` SDK's URL and headers; ``test_requests_carry_what_the_sdk_would_send``
sends its request again through ``AsyncOpenAI.completions.create`` and compares what arrived.

* ``transformers serve`` hosting the tiny toy teacher: a real OpenAI-compatible server that
  nobody here wrote, run offline in a subprocess. It loads models with ``device_map`` (so it needs
  ``accelerate``, in the dev extra) and ignores ``n`` (one choice per request), which the
  provider detects and works around.
* a LOCAL STAND-IN written for this suite (``tests/gateway/standins/openai_api.py``), not vLLM
  or OpenAI, which records the prompts it receives and injects failures on demand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.base import create_provider
from omniopd.gateway.providers.openai_completions import ServerPrompt

from .gwtools import toy_teacher_dir
from .gwtools import transformers_serve as serve_model
from .standins import openai_api
from .standins.server import Fault
from .standins.textgen import generate

KEY_ENV = "STANDIN_COMPLETIONS_API_KEY"
KEY = "sk-standin-completions-4411aa"
PROMPT = "Q: 37+48*2=?"
SERVE_START_TIMEOUT = 180  # seconds: imports transformers, fastapi and the model on 2 cores


@pytest.fixture(scope="module")
def teacher_dir() -> Path:
    """The tiny toy teacher (random weights, real tokenizer and chat template), built once per
    test run and shared with the other gateway tests."""
    return toy_teacher_dir()


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


def params(partial: str = "", *, n: int = 1, **kw) -> SampleParams:
    fields = {"max_tokens": 12, "temperature": 0.0, "top_p": 1.0} | kw
    return SampleParams(messages=(Message("user", PROMPT),), partial_answer=partial, n=n, **fields)


# -- against the stand-in -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    server, state = openai_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
async def provider(standin, teacher_dir, monkeypatch):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    config = TeacherConfig(
        name="toy",
        provider="openai_completions",
        model="toy-teacher",
        tokenizer=str(teacher_dir),
        base_url=f"{server.url}/v1",
        api_key_env=KEY_ENV,
    )
    made = create_provider(config)
    await made.start()
    yield made
    await made.aclose()


async def test_prompt_is_the_chat_template_plus_the_partial_answer(provider, standin, tokenizer):
    _, state = standin
    partial = "37+96="
    result = await provider.sample(params(partial, n=4), timeout=10)
    expected = (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
        + partial
    )
    (sent,) = state.requests  # n=4 from one request: one prefill
    assert sent.path == "/v1/completions"
    assert sent.body["prompt"] == expected and sent.body["n"] == 4
    assert provider.supports_continuation and result.continuation == "prefill"
    # The text is what the server generated after that exact prompt, nothing added or removed.
    assert [c.text for c in result.chunks] == [
        generate(expected, "", temperature=0, max_tokens=12).text
    ] * 4
    assert result.input_tokens == sent_usage_prompt_tokens(expected)
    assert result.output_tokens == sum(c.output_tokens for c in result.chunks) == 4 * 12
    assert {c.finish_reason for c in result.chunks} == {"length"}


def sent_usage_prompt_tokens(prompt: str) -> int:
    from .standins.textgen import count_tokens

    return count_tokens(prompt)


async def test_requests_carry_what_the_sdk_would_send(provider, standin):
    """The provider's request, sent again through ``AsyncOpenAI.completions.create``, reaches
    the server with the same path, body and headers (less the SDK's name and telemetry)."""
    import openai

    from .test_openai_chat import same_wire, sdk_send

    server, state = standin
    await provider.sample(params("37+96=", n=2, temperature=0.5, seed=4, stop=("\n",)), timeout=10)
    (ours,) = state.requests
    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0)
    try:
        await sdk_send(sdk.completions.create, ours.body)
    finally:
        await sdk.close()
    same_wire(ours, state.requests[1])
    assert ours.headers["authorization"] == f"Bearer {KEY}"


async def test_input_tokens_are_counted_exactly_before_the_call(provider, tokenizer):
    p = params("37+96=", n=3)
    prompt = provider.render(p).prompt
    assert provider.estimate_input_tokens(p) == len(tokenizer(prompt)["input_ids"])


async def test_a_server_that_ignores_n_gets_one_request_per_sample(provider, standin):
    _, state = standin
    state.max_choices = 1
    result = await provider.sample(params("", n=3, temperature=1.0, seed=11), timeout=10)
    assert len(result.chunks) == 3 and len({c.text for c in result.chunks}) == 3
    assert sorted(r.body["seed"] for r in state.requests) == [11, 12, 13]
    assert provider.backend_calls(params(n=3)) == 3


async def test_stop_and_options_reach_the_server(standin, teacher_dir, monkeypatch):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    config = TeacherConfig(
        name="toy",
        provider="openai_completions",
        model=str(teacher_dir),  # no `tokenizer:` given: the model's own is used
        base_url=f"{server.url}/v1",
        api_key_env=KEY_ENV,
        options={"extra_body": {"seed": 99}},
    )
    made = create_provider(config)
    await made.start()
    try:
        await made.sample(params("", stop=("=",)), timeout=10)
    finally:
        await made.aclose()
    body = state.requests[0].body
    assert body["stop"] == ["="] and body["seed"] == 99 and body["model"] == str(teacher_dir)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(status=429, retry_after=2), ErrorKind.RATE_LIMITED),
        (Fault(status=502), ErrorKind.UNAVAILABLE),
        (Fault(drop=True), ErrorKind.UNAVAILABLE),
    ],
    ids=["429", "502", "dropped"],
)
async def test_failures_are_classified(provider, standin, fault, kind):
    _, state = standin
    state.inject(fault)
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=10)
    assert info.value.kind is kind and len(state.requests) == 1


async def test_a_tokenizer_without_chat_template_fails_at_start(teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(teacher_dir)
    plain.chat_template = None
    plain.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    config = TeacherConfig(
        name="plain",
        provider="openai_completions",
        model="m",
        tokenizer=str(tmp_path),
        base_url="http://127.0.0.1:9/v1",
    )
    with pytest.raises(ValueError, match="no chat_template"):
        await create_provider(config).start()


class _BosTokenizer:
    """A tokenizer whose template writes BOS and whose encoder adds BOS too (Llama 3 style)."""

    bos_token = "<s>"
    bos_token_id = 1

    def __init__(self, adds_bos: bool) -> None:
        self.adds_bos = adds_bos

    def apply_chat_template(self, conversation, tokenize, add_generation_prompt):
        return "<s>[user]" + conversation[-1]["content"] + "[assistant]"

    def __call__(self, text):
        return {"input_ids": ([1] if self.adds_bos else []) + [5] * len(text)}


def test_a_templated_bos_is_not_doubled():
    p = SampleParams(
        messages=(Message("user", "hi"),),
        partial_answer="ok",
        n=1,
        max_tokens=4,
        temperature=0.0,
        top_p=1.0,
    )
    assert ServerPrompt(_BosTokenizer(adds_bos=True)).text(p) == "[user]hi[assistant]ok"
    assert ServerPrompt(_BosTokenizer(adds_bos=False)).text(p) == "<s>[user]hi[assistant]ok"


# -- against `transformers serve` ---------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_serve(teacher_dir, tmp_path_factory):
    """``transformers serve <toy teacher>`` on 127.0.0.1, port 0, offline; yields its base URL."""
    log_path = tmp_path_factory.mktemp("transformers-serve") / "serve.log"
    with serve_model(teacher_dir, log_path, SERVE_START_TIMEOUT) as url:
        yield url


@pytest.fixture
async def served(transformers_serve, teacher_dir):
    config = TeacherConfig(
        name="toy-served",
        provider="openai_completions",
        model=str(teacher_dir),  # transformers serve names a model by its path
        base_url=f"{transformers_serve}/v1",
        timeout_s=60,
    )
    made = create_provider(config)
    await made.start()
    yield made
    await made.aclose()


def greedy_continuation(teacher_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """What the toy teacher itself generates greedily after ``prompt``, run in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


async def test_transformers_serve_continues_the_partial_answer(served, teacher_dir):
    partial = "37+96"
    p = params(partial, n=2, max_tokens=10)
    result = await served.sample(p, timeout=60)
    prompt = served.render(p).prompt
    want = greedy_continuation(teacher_dir, prompt, 10)
    assert want, "the toy teacher generated nothing after the prompt"
    # A true continuation: exactly what the teacher writes next, from the server.
    assert [c.text for c in result.chunks] == [want, want]
    # transformers serve ignores n: the provider asked again and now plans one per sample.
    assert served.backend_calls(params(n=2)) == 2
    assert result.input_tokens == 2 * served.estimate_input_tokens(params(partial)) > 0
    assert all(c.output_tokens > 0 for c in result.chunks)
