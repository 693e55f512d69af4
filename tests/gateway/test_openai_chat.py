"""The ``openai`` (Chat Completions) provider: the ``openai`` SDK's wire format and identity.

The provider posts through its own pooled aiohttp client (``providers/http.py``) with the URL
and headers the official ``openai`` SDK would use, read from an SDK client. The SDK's wire format
is checked, not assumed: ``test_requests_carry_what_the_sdk_would_send`` sends the provider's
requests again through ``AsyncOpenAI.chat.completions.create`` and requires the server to
receive the same path, JSON body and headers (less the SDK's ``User-Agent`` and
``X-Stainless-*`` telemetry).

The server these tests talk to is a LOCAL STAND-IN written for this suite
(``tests/gateway/standins/openai_api.py``), not OpenAI, Gemini or vLLM: it speaks the Chat
Completions wire format, behaves like OpenAI for ``gpt-*`` model names (unknown fields such as
``continue_final_message`` are refused with HTTP 400) and like vLLM for other names (the
option continues the final assistant message), and injects 429/5xx/delays/dropped
connections on demand.
"""

from __future__ import annotations

import inspect
import logging
import time

import pytest

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.base import create_provider
from omniopd.gateway.providers.openai_common import ChoiceBudget, hosted_api

from .standins import openai_api
from .standins.server import Fault
from .standins.textgen import reference_answer

KEY_ENV = "STANDIN_OPENAI_API_KEY"
KEY = "sk-proj-standin-3e8b0c61f4"
QUESTION = "A train leaves at 3 pm at 60 km/h. How far has it gone by 5 pm?"
ANSWER = reference_answer(QUESTION)
SERVER_MODEL = "qwen-teacher"  # the stand-in continues a final assistant message for this name
OPENAI_MODEL = "gpt-4o-mini"  # ... and refuses continue_final_message for this one


@pytest.fixture(scope="module")
def standin():
    server, state = openai_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
async def make(standin, monkeypatch):
    """Build and start an openai provider against the stand-in; closed after the test."""
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    made = []

    async def build(model: str = SERVER_MODEL, **fields):
        fields.setdefault("api_key_env", KEY_ENV)
        config = TeacherConfig(
            name=fields.pop("name", "chat"),
            provider="openai",
            model=model,
            base_url=f"{server.url}/v1",
            **fields,
        )
        provider = create_provider(config)
        await provider.start()
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def params(partial: str = "", *, n: int = 1, **kw) -> SampleParams:
    fields = {"max_tokens": 200, "temperature": 0.0, "top_p": 1.0} | kw
    return SampleParams(
        messages=(Message("user", QUESTION),), partial_answer=partial, n=n, **fields
    )


def words(k: int) -> str:
    return " ".join(ANSWER.split()[:k]) + " "


# -- continuation -------------------------------------------------------------------------------


async def test_server_continues_the_final_message_with_n_from_one_request(make, standin):
    _, state = standin
    provider = await make(continuation="auto")
    partial = words(9)
    result = await provider.sample(params(partial, n=4), timeout=10)
    assert provider.supports_continuation and result.continuation == "prefill"
    assert [partial + c.text for c in result.chunks] == [ANSWER] * 4
    (sent,) = state.requests  # all four choices from one request: one prefill
    body = sent.body
    assert body["n"] == 4 and body["max_tokens"] == 200
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": partial.rstrip()}
    assert result.input_tokens > 0
    assert sum(c.output_tokens for c in result.chunks) == result.output_tokens > 0


async def test_no_partial_answer_sends_no_continuation_option(make, standin):
    _, state = standin
    provider = await make()
    result = await provider.sample(params(""), timeout=10)
    assert result.chunks[0].text == ANSWER
    assert "continue_final_message" not in state.requests[0].body


async def test_openai_refusal_switches_an_auto_teacher_to_instruction(make, standin, caplog):
    _, state = standin
    provider = await make(OPENAI_MODEL, continuation="auto")
    switched: list[str] = []
    provider.on_continuation_fallback = switched.append
    partial = words(11)
    with caplog.at_level(logging.WARNING):
        first = await provider.sample(params(partial, n=2), timeout=10)
        second = await provider.sample(params(partial, n=2), timeout=10)
    for result in (first, second):
        assert result.continuation == "instruction"
        assert [partial + c.text for c in result.chunks] == [ANSWER] * 2  # echo stripped
    assert provider.continuation_fallbacks == 1 and switched == ["chat"]
    assert sum("instruction from now on" in r.getMessage() for r in caplog.records) == 1
    # prefill refused once, then the same request by instruction, then instruction directly
    assert len(state.requests) == 3
    assert "continue_final_message" in state.requests[0].body
    for later in state.requests[1:]:
        assert "continue_final_message" not in later.body
        assert later.body["messages"][-1]["role"] == "user"


async def test_prefill_forced_on_a_refusing_server_is_an_error(make, standin):
    provider = await make(OPENAI_MODEL, continuation="prefill")
    with pytest.raises(ProviderError) as info:
        await provider.sample(params(words(4)), timeout=10)
    assert info.value.kind is ErrorKind.PREFILL_UNSUPPORTED and not info.value.retryable
    assert "Unrecognized request argument" in info.value.message


def test_openai_and_gemini_endpoints_use_instruction_from_the_start():
    assert hosted_api(None) == "openai"
    assert hosted_api("https://api.openai.com/v1") == "openai"
    assert hosted_api("https://my-team.openai.azure.com/openai/v1") == "openai"
    assert hosted_api("https://generativelanguage.googleapis.com/v1beta/openai/") == "gemini"
    assert hosted_api("http://127.0.0.1:8000/v1") is None
    assert hosted_api("https://api.openai.com.example.net/v1") is None
    for url, model in [
        ("https://api.openai.com/v1", "gpt-4.1-mini"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini-2.5-flash"),
    ]:
        config = TeacherConfig(name="t", provider="openai", model=model, base_url=url)
        provider = create_provider(config)  # not started: no key, no network needed
        assert provider.continuation.current == "instruction"
        assert not provider.supports_continuation


def test_openai_gets_max_completion_tokens_other_servers_max_tokens():
    p = params("so ")
    hosted = create_provider(TeacherConfig(name="t", provider="openai", model=OPENAI_MODEL))
    local = create_provider(
        TeacherConfig(name="t", provider="openai", model="m", base_url="http://127.0.0.1:1/v1")
    )
    messages = [Message("user", QUESTION)]
    assert hosted.request_body("instruction", messages, p)["max_completion_tokens"] == 200
    assert local.request_body("instruction", messages, p)["max_tokens"] == 200


async def test_instruction_mode_on_a_server(make, standin):
    _, state = standin
    provider = await make(continuation="instruction")
    partial = words(5)
    result = await provider.sample(params(partial), timeout=10)
    assert not provider.supports_continuation
    assert partial + result.chunks[0].text == ANSWER
    last = state.requests[0].body["messages"][-1]
    assert last["role"] == "user" and partial in last["content"]


# -- n, seeds, sampling fields ------------------------------------------------------------------


async def test_a_server_that_ignores_n_is_asked_again_with_distinct_seeds(make, standin, caplog):
    _, state = standin
    state.max_choices = 1  # like `transformers serve`
    provider = await make()
    with caplog.at_level(logging.WARNING):
        result = await provider.sample(params(words(3), n=4, temperature=1.0, seed=7), timeout=10)
    assert len(result.chunks) == 4
    assert len({c.text for c in result.chunks}) == 4  # four different samples
    assert sorted(r.body["seed"] for r in state.requests) == [7, 8, 9, 10]
    assert provider.backend_calls(params(n=4)) == 4  # the rate limiter now counts them all
    assert sum("ignores or caps n" in r.getMessage() for r in caplog.records) == 1


async def test_a_server_that_caps_n_gets_the_rest_in_batches(make, standin):
    _, state = standin
    state.max_choices = 3
    provider = await make()
    result = await provider.sample(params("", n=8, temperature=1.0), timeout=10)
    assert len(result.chunks) == 8
    assert [r.body["n"] for r in state.requests] == [8, 3, 2]
    assert "seed" not in state.requests[0].body  # none asked, none invented
    assert ChoiceBudget("x").plan(5) == [5]
    assert provider.budget.plan(8) == [3, 3, 2]


async def test_sampling_fields_stop_and_options_reach_the_server(make, standin):
    _, state = standin
    provider = await make(options={"top_k": 20, "extra_body": {"repetition_penalty": 1.1}})
    stop_word = ANSWER.split()[12]
    result = await provider.sample(
        params(words(2), temperature=0.7, top_p=0.9, seed=3, stop=(stop_word,)), timeout=10
    )
    body = state.requests[0].body
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 3)
    assert body["stop"] == [stop_word]
    assert body["top_k"] == 20 and body["repetition_penalty"] == 1.1
    assert result.chunks[0].finish_reason == "stop"


async def test_max_tokens_ends_with_length(make):
    provider = await make()
    result = await provider.sample(params("", max_tokens=5), timeout=10)
    assert result.chunks[0].finish_reason == "length" and result.chunks[0].output_tokens == 5


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "retry_after"),
    [
        (Fault(status=429, retry_after=3), ErrorKind.RATE_LIMITED, 3.0),
        (Fault(status=429, retry_after_ms=250), ErrorKind.RATE_LIMITED, 0.25),
        (Fault(status=500), ErrorKind.UNAVAILABLE, None),
        (Fault(status=503, retry_after=1), ErrorKind.UNAVAILABLE, 1.0),
        (Fault(drop=True), ErrorKind.UNAVAILABLE, None),
        (Fault(garbage=True), ErrorKind.UNAVAILABLE, None),
        (Fault(status=404), ErrorKind.BAD_REQUEST, None),
    ],
    ids=["429", "429-ms", "500", "503", "dropped", "not-json", "404"],
)
async def test_backend_failures_are_classified_and_not_retried_here(
    make, standin, fault, kind, retry_after
):
    _, state = standin
    provider = await make()
    state.inject(fault)
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x", n=2), timeout=10)
    assert info.value.kind is kind and info.value.retry_after == retry_after
    assert len(state.requests) == 1  # one attempt: the gateway core owns retries


async def test_slow_backend_times_out_within_the_attempt(make, standin):
    _, state = standin
    provider = await make()
    state.inject(Fault(delay=5))
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=0.5)
    assert info.value.kind is ErrorKind.TIMEOUT and info.value.retryable
    assert time.monotonic() - started < 2


# -- keys ---------------------------------------------------------------------------------------


async def test_wrong_key_is_auth_and_never_shown(make, monkeypatch):
    wrong = "sk-proj-canary-77a1c09e3b"
    monkeypatch.setenv(KEY_ENV, wrong)
    provider = await make()
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=10)
    assert info.value.kind is ErrorKind.AUTH
    assert wrong not in info.value.message and "[REDACTED]" in info.value.message


async def test_a_self_hosted_server_never_receives_the_openai_key(standin, monkeypatch):
    server, state = standin
    state.reset()
    canary = "sk-openai-canary-19fe2b"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    keyless = TeacherConfig(name="local", provider="openai", model="m", base_url=f"{server.url}/v1")
    provider = create_provider(keyless)
    await provider.start()
    try:
        with pytest.raises(ProviderError):  # the stand-in wants its own key: 401
            await provider.sample(params("x"), timeout=10)
    finally:
        await provider.aclose()
    sent = state.requests[0].headers["authorization"]
    assert canary not in sent and sent == "Bearer EMPTY"


# Headers that differ on purpose (the gateway does not claim to be the SDK) or by transport.
NOT_COMPARED = {"user-agent", "connection"}


def same_wire(ours, theirs) -> None:
    """``ours`` (the provider's request) and ``theirs`` (the SDK's) reached the server alike."""
    assert (ours.path, ours.body) == (theirs.path, theirs.body)
    sdk_headers = {
        k: v
        for k, v in theirs.headers.items()
        if k not in NOT_COMPARED and not k.startswith("x-stainless")
    }
    assert {k: v for k, v in ours.headers.items() if k not in NOT_COMPARED} == sdk_headers
    assert ours.headers["user-agent"].startswith("omniopd-gateway")  # not the SDK's name
    assert not any(h.startswith("x-stainless") for h in ours.headers)


async def sdk_send(create, body: dict) -> None:
    """Send ``body`` with an SDK ``create`` method: its typed fields, the rest as extra_body."""
    typed = inspect.signature(create).parameters
    fields = {k: v for k, v in body.items() if k in typed}
    extra = {k: v for k, v in body.items() if k not in typed}
    await create(**fields, extra_body=extra or None)


@pytest.mark.parametrize(
    ("model", "partial", "fields", "teacher"),
    [
        (SERVER_MODEL, "", {"n": 2, "seed": 5}, {}),
        (SERVER_MODEL, "First, ", {"n": 3, "stop": ("\n\n",)}, {"options": {"top_k": 20}}),
        (OPENAI_MODEL, "First, ", {"n": 2, "top_p": 0.9}, {"continuation": "instruction"}),
    ],
    ids=["plain", "prefill-with-options", "openai-instruction"],
)
async def test_requests_carry_what_the_sdk_would_send(
    make, standin, monkeypatch, model, partial, fields, teacher
):
    """The same request through the official SDK reaches the server byte for byte the same."""
    import openai

    server, state = standin
    monkeypatch.setenv("OPENAI_ORG_ID", "org-standin")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-standin")
    provider = await make(model, **teacher)
    await provider.sample(params(partial, **fields), timeout=10)
    (ours,) = state.requests
    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0)
    try:
        await sdk_send(sdk.chat.completions.create, ours.body)
    finally:
        await sdk.close()
    _, theirs = state.requests
    same_wire(ours, theirs)
    assert ours.headers["authorization"] == f"Bearer {KEY}"
    assert ours.headers["openai-organization"] == "org-standin"
    assert ours.headers["openai-project"] == "proj-standin"


async def test_hosted_openai_without_its_key_fails_at_start(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = create_provider(TeacherConfig(name="gpt", provider="openai", model=OPENAI_MODEL))
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY is not set"):
        await provider.start()


# -- through a real gateway ---------------------------------------------------------------------


async def test_through_the_gateway_prefill_fallback_and_a_retried_429(standin, monkeypatch):
    from omniopd.proto.v1 import gateway_pb2 as pb

    from .gwtools import request, serving

    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    base = {"base_url": f"{server.url}/v1", "api_key_env": KEY_ENV, "provider": "openai"}
    config = {
        "teachers": [
            {"name": "qwen", "model": SERVER_MODEL, **base},
            {"name": "gpt", "model": OPENAI_MODEL, **base},
        ]
    }
    partial = words(8)
    async with serving(config) as gw:
        state.inject(Fault(status=429, retry_after=0.2))
        reply = await gw.stub.SampleChunks(
            request("qwen", QUESTION, partial, n=3, temperature=0.0, max_tokens=200)
        )
        assert [partial + c.text for c in reply.chunks] == [ANSWER] * 3
        assert reply.continuation == "prefill" and not reply.cached
        assert len(state.requests) == 2  # the 429, then the core's retry after retry-after

        reply = await gw.stub.SampleChunks(
            request("gpt", QUESTION, partial, n=2, temperature=0.0, max_tokens=200)
        )
        assert [partial + c.text for c in reply.chunks] == [ANSWER] * 2
        assert reply.continuation == "instruction"
        teachers = {
            t.name: t for t in (await gw.stub.ListTeachers(pb.ListTeachersRequest())).teachers
        }
        assert teachers["qwen"].supports_continuation
        assert not teachers["gpt"].supports_continuation
        assert gw.metric("omniopd_gateway_continuation_fallbacks_total", teacher="gpt") == 1
        assert gw.metric("omniopd_gateway_continuation_fallbacks_total", teacher="qwen") == 0
