"""The ``anthropic`` provider through the official ``anthropic`` SDK.

The server these tests talk to is a LOCAL STAND-IN written for this suite
(``tests/gateway/standins/anthropic_api.py``), not Anthropic's API: it speaks the Messages wire
format, reproduces the two prefill behaviours by model name (accepted up to Claude 4.5, HTTP 400
from 4.6 on) and injects 429/5xx/delays/dropped connections on demand.
"""

from __future__ import annotations

import logging
import time

import pytest

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.anthropic import sampling_fields
from omniopd.gateway.providers.base import create_provider

from .standins import anthropic_api
from .standins.server import Fault
from .standins.textgen import reference_answer

KEY_ENV = "STANDIN_ANTHROPIC_API_KEY"
KEY = "sk-ant-standin-5c1d9e0b7a"
QUESTION = "What is 17 + 25? Show your work."
ANSWER = reference_answer(QUESTION)


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
async def make(standin, monkeypatch):
    """Build and start an anthropic provider against the stand-in; closed after the test."""
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    made = []

    async def build(model: str = "claude-haiku-4-5", **fields):
        config = TeacherConfig(
            name=fields.pop("name", "claude"),
            provider="anthropic",
            model=model,
            base_url=server.url,
            api_key_env=KEY_ENV,
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
    """The first ``k`` words of the stand-in's answer, with the space that follows them."""
    return " ".join(ANSWER.split()[:k]) + " "


def sent_turns(state) -> list[list[dict]]:
    return [r.body["messages"] for r in state.requests]


# -- continuation -------------------------------------------------------------------------------


async def test_claude_45_prefill_is_a_true_continuation(make, standin):
    _, state = standin
    provider = await make("claude-haiku-4-5")
    partial = words(10)  # ends in a space: the API would refuse it as a prefill
    result = await provider.sample(params(partial, n=3), timeout=10)
    assert result.continuation == "prefill" and provider.supports_continuation
    assert len(result.chunks) == 3
    for chunk in result.chunks:
        assert partial + chunk.text == ANSWER  # the rest of the answer, nothing repeated
        assert chunk.finish_reason == "stop"
    # One request per sample (the API has no n), each ending in the whitespace-free prefill.
    assert len(state.requests) == 3 == provider.backend_calls(params(partial, n=3))
    for turns in sent_turns(state):
        assert turns[-1] == {"role": "assistant", "content": partial.rstrip()}
    assert result.output_tokens == sum(c.output_tokens for c in result.chunks) > 0
    assert result.input_tokens > 0


async def test_partial_ending_in_newlines_keeps_them_once(make, standin):
    provider = await make("claude-3-5-haiku-20241022")
    stem = " ".join(ANSWER.split()[:6])
    result = await provider.sample(params(stem + "\n\n"), timeout=10)
    # The model, seeing no newline, continues the line with " word ..."; the partial answer's
    # newlines stand and the model's space goes, so nothing is doubled.
    text = result.chunks[0].text
    assert not text[0].isspace()
    assert text == ANSWER[len(stem) :].lstrip()


async def test_empty_partial_answer_asks_for_the_whole_answer(make, standin):
    _, state = standin
    provider = await make()
    result = await provider.sample(params(""), timeout=10)
    assert result.chunks[0].text == ANSWER
    assert sent_turns(state)[0] == [{"role": "user", "content": QUESTION}]


async def test_claude_46_refuses_prefill_and_auto_switches_for_good(make, standin, caplog):
    _, state = standin
    provider = await make("claude-sonnet-4-6")  # continuation: auto (the default)
    switched: list[str] = []
    provider.on_continuation_fallback = switched.append
    partial = words(12)
    with caplog.at_level(logging.WARNING):
        first = await provider.sample(params(partial, n=2), timeout=10)
        second = await provider.sample(params(partial), timeout=10)
    for result in (first, second):
        assert result.continuation == "instruction"
        for chunk in result.chunks:
            # The stand-in answers an instruction from the start; the echo is stripped.
            assert partial + chunk.text == ANSWER
    assert not provider.supports_continuation
    assert provider.continuation_fallbacks == 1 and switched == ["claude"]
    assert sum("instruction from now on" in r.getMessage() for r in caplog.records) == 1
    # Prefill was tried (and refused) for the first request only.
    prefills = [t for t in sent_turns(state) if t[-1]["role"] == "assistant"]
    assert 1 <= len(prefills) <= 2
    last = sent_turns(state)[-1]
    assert last[-1]["role"] == "user" and partial in last[-1]["content"]


async def test_claude_46_with_prefill_forced_fails_without_retrying(make, standin):
    _, state = standin
    provider = await make("claude-opus-4-6", continuation="prefill")
    with pytest.raises(ProviderError) as info:
        await provider.sample(params(words(5)), timeout=10)
    err = info.value
    assert err.kind is ErrorKind.PREFILL_UNSUPPORTED and not err.retryable
    assert err.status == 400 and "prefill" in err.message
    assert len(state.requests) == 1 and provider.continuation_fallbacks == 0


async def test_instruction_mode_puts_the_partial_answer_in_the_user_turn(make, standin):
    _, state = standin
    provider = await make(continuation="instruction")
    partial = words(7)
    system = Message("system", "You are terse.")
    p = SampleParams(
        messages=(system, Message("user", QUESTION)),
        partial_answer=partial,
        n=1,
        max_tokens=200,
        temperature=0.0,
        top_p=1.0,
    )
    result = await provider.sample(p, timeout=10)
    assert not provider.supports_continuation and result.continuation == "instruction"
    assert partial + result.chunks[0].text == ANSWER
    body = state.requests[0].body
    assert body["system"] == "You are terse."
    (turn,) = body["messages"]
    assert turn["role"] == "user" and turn["content"].startswith(QUESTION)
    assert partial in turn["content"]


# -- sampling settings --------------------------------------------------------------------------


async def test_stop_sequences_and_max_tokens(make, standin):
    _, state = standin
    provider = await make()
    stop_word = ANSWER.split()[15]
    result = await provider.sample(params(words(3), stop=(stop_word,)), timeout=10)
    assert result.chunks[0].finish_reason == "stop"
    assert stop_word not in result.chunks[0].text
    assert state.requests[-1].body["stop_sequences"] == [stop_word]
    short = await provider.sample(params(words(3), max_tokens=4), timeout=10)
    assert short.chunks[0].finish_reason == "length"
    assert short.chunks[0].output_tokens == 4


def test_one_sampler_where_one_is_enough():
    assert sampling_fields(0.7, 1.0) == {"temperature": 0.7}
    assert sampling_fields(1.0, 0.9) == {"top_p": 0.9}
    assert sampling_fields(0.5, 0.9) == {"temperature": 0.5, "top_p": 0.9}


async def test_sampling_fields_travel_in_the_body(make, standin):
    _, state = standin
    provider = await make()
    await provider.sample(params("", temperature=1.0, top_p=0.8), timeout=10)
    body = state.requests[-1].body
    assert body["top_p"] == 0.8 and "temperature" not in body
    # Both samplers at once: Claude 4.5 refuses them (HTTP 400), which is not retryable.
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("", temperature=0.5, top_p=0.8), timeout=10)
    assert info.value.kind is ErrorKind.BAD_REQUEST and "top_p" in info.value.message


async def test_temperature_above_the_api_maximum_fails_before_any_call(make, standin):
    _, state = standin
    provider = await make()
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("", temperature=1.5), timeout=10)
    assert info.value.kind is ErrorKind.BAD_REQUEST and "1.5" in info.value.message
    assert state.requests == []


async def test_samples_are_requested_concurrently(make, standin):
    _, state = standin
    provider = await make()
    state.inject(*[Fault(delay=0.4)] * 4)
    started = time.monotonic()
    result = await provider.sample(params("", n=4, temperature=1.0), timeout=10)
    assert time.monotonic() - started < 1.2  # 4 x 0.4 s one after another would be 1.6 s
    assert len({c.text for c in result.chunks}) > 1  # fresh samples, not one copied


async def test_estimates_count_every_call(make):
    provider = await make()
    one, four = params(words(4)), params(words(4), n=4)
    assert provider.estimate_input_tokens(four) == 4 * provider.estimate_input_tokens(one) > 0


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(status=429, retry_after=7), ErrorKind.RATE_LIMITED),
        (Fault(status=529, retry_after=2), ErrorKind.UNAVAILABLE),
        (Fault(status=500), ErrorKind.UNAVAILABLE),
        (Fault(status=503), ErrorKind.UNAVAILABLE),
        (Fault(drop=True), ErrorKind.UNAVAILABLE),
        (Fault(garbage=True), ErrorKind.UNAVAILABLE),
        (Fault(status=400), ErrorKind.BAD_REQUEST),
    ],
    ids=["429", "529", "500", "503", "dropped", "not-json", "400"],
)
async def test_backend_failures_are_classified_and_not_retried_by_the_sdk(
    make, standin, fault, kind
):
    _, state = standin
    provider = await make()
    state.inject(fault)
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=10)
    err = info.value
    assert err.kind is kind
    assert err.retryable == (kind is not ErrorKind.BAD_REQUEST)
    assert err.retry_after == fault.retry_after
    assert len(state.requests) == 1  # max_retries=0: the gateway core owns retries


async def test_samples_that_arrived_are_kept_for_the_retry_and_not_paid_twice(make, standin):
    _, state = standin
    provider = await make()
    p = params(words(6), n=3)
    state.inject(Fault(status=429, retry_after=1))  # the first of the three calls fails
    with pytest.raises(ProviderError) as info:
        await provider.sample(p, timeout=10)
    assert info.value.kind is ErrorKind.RATE_LIMITED
    assert len(state.requests) == 3  # the other two finished (not cancelled): they are paid for
    assert provider.backend_calls(p) == 1  # the core's retry will cost one request
    result = await provider.sample(p, timeout=10)  # the core's retry
    assert len(state.requests) == 4
    assert len(result.chunks) == 3 and all(words(6) + c.text == ANSWER for c in result.chunks)
    assert result.input_tokens > 0 and provider.backend_calls(p) == 3


async def test_slow_backend_times_out_within_the_attempt(make, standin):
    _, state = standin
    provider = await make()
    state.inject(Fault(delay=5))
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=0.5)
    assert info.value.kind is ErrorKind.TIMEOUT and info.value.retryable
    assert time.monotonic() - started < 2


async def test_connection_refused_is_unavailable(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    config = TeacherConfig(
        name="nowhere",
        provider="anthropic",
        model="claude-haiku-4-5",
        base_url="http://127.0.0.1:9",  # discard port: nothing listens
        api_key_env=KEY_ENV,
    )
    provider = create_provider(config)
    await provider.start()
    try:
        with pytest.raises(ProviderError) as info:
            await provider.sample(params("x"), timeout=5)
        assert info.value.kind is ErrorKind.UNAVAILABLE
    finally:
        await provider.aclose()


# -- keys ---------------------------------------------------------------------------------------


async def test_wrong_key_is_auth_and_never_shown(make, standin, monkeypatch):
    wrong = "sk-ant-canary-0d4e8f2a91"
    monkeypatch.setenv(KEY_ENV, wrong)
    provider = await make()
    with pytest.raises(ProviderError) as info:
        await provider.sample(params("x"), timeout=10)
    err = info.value
    assert err.kind is ErrorKind.AUTH and not err.retryable
    # The stand-in echoes the key it got; the provider's message must not carry it.
    assert wrong not in err.message and wrong not in str(err) and "[REDACTED]" in err.message


async def test_missing_key_fails_at_start_naming_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = TeacherConfig(
        name="claude", provider="anthropic", model="claude-haiku-4-5", api_key_env=KEY_ENV
    )
    with pytest.raises(RuntimeError, match=KEY_ENV):
        await create_provider(config).start()
