"""What one backend call costs the gateway process: the ``openai`` provider vs. the SDK used plainly.

Against the fixed-latency backend (``bench/backends.py``, its own process), with 64 calls in
flight and ``n=8``, this measures the CPU time of this process per call (``time.process_time``,
so the backend's CPU is not counted) for:

- ``sdk_create``: ``chat.completions.create(...)``, the SDK as usually used (typed request and
  response, httpx transport): the baseline;
- ``sdk_post_httpx``: ``client.post(..., cast_to=bytes)`` on the default httpx transport;
- ``sdk_post_aiohttp``: the same on the SDK's aiohttp transport (``DefaultAioHttpClient``);
- ``json_client``: the same request through the providers' pooled aiohttp client
  (``providers/http.py``: the SDK's URL and headers, without the SDK's request path);
- ``provider``: ``OpenAIChatProvider.sample`` (what the gateway runs: that client, plus
  continuation handling and token shares).

Each is measured in several interleaved rounds and the median is reported. Prints a table, then
as its last line one JSON object with the figures (ms CPU per call) and ``provider_over_sdk``.

    .venv/bin/python bench/providers.py            # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import Backend

IN_FLIGHT = 64
N_SAMPLES = 8
MAX_TOKENS = 16


async def cpu_ms_per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """CPU milliseconds of this process per call, ``IN_FLIGHT`` calls at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return (time.process_time() - started) / calls * 1000


async def measure(calls: int, rounds: int) -> dict[str, float]:
    import openai

    from omniopd.gateway.config import TeacherConfig
    from omniopd.gateway.providers import Message, SampleParams, create_provider
    from omniopd.gateway.providers.http import JSONClient, sdk_identity

    with Backend(delay_s=0.05) as backend:
        url = f"{backend.url}/v1"
        plain = openai.AsyncOpenAI(api_key="EMPTY", base_url=url, max_retries=0)
        aio = openai.AsyncOpenAI(
            api_key="EMPTY", base_url=url, max_retries=0, http_client=openai.DefaultAioHttpClient()
        )
        config = TeacherConfig(
            name="bench", provider="openai", model="bench", base_url=url, continuation="prefill"
        )
        provider = create_provider(config)
        await provider.start()
        pooled = JSONClient(*sdk_identity(plain), where="bench")
        await pooled.start()

        def question(i: int) -> str:
            return f"Question {i}: what is {i} + {i % 97}? Show your work step by step."

        def body(i: int) -> dict:
            return {
                "model": "bench",
                "messages": [{"role": "user", "content": question(i)}],
                "max_tokens": MAX_TOKENS,
                "temperature": 1.0,
                "top_p": 1.0,
                "n": N_SAMPLES,
            }

        async def sdk_create(i: int) -> object:
            return await plain.chat.completions.create(**body(i))

        async def sdk_post_httpx(i: int) -> object:
            return json.loads(await plain.post("/chat/completions", body=body(i), cast_to=bytes))

        async def sdk_post_aiohttp(i: int) -> object:
            return json.loads(await aio.post("/chat/completions", body=body(i), cast_to=bytes))

        async def json_client(i: int) -> object:
            return await pooled.post("/chat/completions", body(i), timeout=30)

        async def through_provider(i: int) -> object:
            params = SampleParams(
                messages=(Message("user", question(i)),),
                partial_answer="First, ",
                n=N_SAMPLES,
                max_tokens=MAX_TOKENS,
                temperature=1.0,
                top_p=1.0,
            )
            return await provider.sample(params, timeout=30)

        ways = {
            "sdk_create": sdk_create,
            "sdk_post_httpx": sdk_post_httpx,
            "sdk_post_aiohttp": sdk_post_aiohttp,
            "json_client": json_client,
            "provider": through_provider,
        }
        for call in ways.values():  # warm up: connections, imports, caches
            await cpu_ms_per_call(call, IN_FLIGHT * 2)
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, call in ways.items():
                samples[name].append(await cpu_ms_per_call(call, calls))
        await provider.aclose()
        await pooled.aclose()
        await plain.close()
        await aio.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1024, help="calls per round and way")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.calls, args.rounds))
    figures["provider_over_sdk"] = figures["provider"] / figures["sdk_create"]
    print(f"{'call (64 in flight, n=8)':34} {'ms CPU per call':>16}")
    for name, value in figures.items():
        if name != "provider_over_sdk":
            print(f"{name:34} {value:16.3f}")
    print(f"{'provider / sdk_create':34} {figures['provider_over_sdk']:16.2f}")
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
