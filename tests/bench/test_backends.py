"""The benchmark's fixed-latency OpenAI-compatible backend (``bench/backends.py``) answers
both endpoints through the official ``openai`` SDK, after its delay, and counts peak
concurrency (what the gateway benchmark relies on)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path

import openai
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "backends.py"


@pytest.fixture(scope="module")
def backends():
    spec = importlib.util.spec_from_file_location("bench_backends", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_backends"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_backends"]


@pytest.fixture(scope="module")
def backend(backends):
    with backends.Backend(delay_s=0.2) as running:
        yield running


async def test_chat_and_completions_answer_after_the_delay_with_n_choices(backend):
    client = openai.AsyncOpenAI(api_key="x", base_url=f"{backend.url}/v1", max_retries=0)
    try:
        started = time.monotonic()
        chat = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=4
        )
        assert time.monotonic() - started >= 0.2
        assert len(chat.choices) == 3 and chat.choices[2].message.content.endswith("(2)")
        assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 12
        text = await client.completions.create(model="bench", prompt="p", n=2, max_tokens=64)
        assert len(text.choices) == 2 and text.choices[0].finish_reason == "stop"
        assert [m.id for m in (await client.models.list()).data] == ["bench"]
    finally:
        await client.close()


async def test_peak_concurrency_is_counted(backend):
    backend.reset()
    client = openai.AsyncOpenAI(api_key="x", base_url=f"{backend.url}/v1", max_retries=0)
    try:
        started = time.monotonic()
        await asyncio.gather(
            *[
                client.completions.create(model="bench", prompt=str(i), max_tokens=2)
                for i in range(10)
            ]
        )
        assert time.monotonic() - started < 1.0  # concurrent: one delay, not ten
    finally:
        await client.close()
    stats = backend.stats()
    assert stats["requests"] == 10 and stats["in_flight"] == 0
    assert 5 <= stats["max_in_flight"] <= 10
