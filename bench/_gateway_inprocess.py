"""The gateway benchmark's in-process measurements, 5 and 6 of ``bench/gateway.py``: the ``hf``
provider's one-prefill sampling, and the limits' own cost."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

from _gateway_load import MAX_TOKENS


def limiter_cost(admits: int) -> dict:
    """Microseconds per admission through a teacher's limits (the ``limits`` library), in
    memory and in Redis (``REDIS_URL``, default 127.0.0.1:6379; skipped when unreachable)."""
    import redis

    from omniopd.gateway.config import TeacherConfig
    from omniopd.gateway.limits import Cost, RateStore, TeacherLimiter

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    limits = {
        "requests_per_minute": 10**9,
        "input_tokens_per_minute": 10**12,
        "output_tokens_per_minute": 10**12,
        "max_concurrency": 64,
    }
    teacher = TeacherConfig(name="bench", provider="hf", model="m", limits=limits)
    cost = Cost(requests=1, input_tokens=200)

    async def run(redis_url: str | None) -> float:
        prefix = f"omniopd-bench:{uuid.uuid4().hex[:8]}:"
        limiter = TeacherLimiter(
            teacher, RateStore(redis_url, prefix), redis_url=redis_url, prefix=prefix
        )
        try:
            started = time.perf_counter()
            for _ in range(admits):
                async with limiter.admit(cost, time.monotonic() + 10):
                    pass
                await limiter.charge_output(100)
            return (time.perf_counter() - started) / admits * 1e6
        finally:
            await limiter.aclose()
            if redis_url:
                client = redis.Redis.from_url(redis_url)
                keys = list(client.scan_iter(match=f"{prefix}*"))
                if keys:
                    client.delete(*keys)
                client.close()

    out = {"limiter_memory_us": asyncio.run(run(None))}
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        out["limiter_redis_us"] = None  # no Redis here: the shared limiter was not measured
    else:
        out["limiter_redis_us"] = asyncio.run(run(url))
    return out


def hf_speedup(model_dir: Path, repeats: int) -> dict:
    """n=8 from one prefill vs. 8 calls of n=1, in process, on the toy teacher."""
    from omniopd.gateway.config import TeacherConfig
    from omniopd.gateway.providers.base import Message, SampleParams
    from omniopd.gateway.providers.hf import HFProvider

    async def run() -> dict:
        provider = HFProvider(TeacherConfig(name="toy", provider="hf", model=str(model_dir)))
        await provider.start()
        prompt = "Add the numbers 17, 25, 33 and 41, carrying where needed."

        def params(n: int, seed: int) -> SampleParams:
            return SampleParams(
                (Message("user", prompt),), "17 + 25 = 42, ", n, MAX_TOKENS, 1.0, 1.0, seed=seed
            )

        one, eight = [], []
        await provider.sample(params(8, 0), timeout=60)  # warm up
        for r in range(repeats):
            started = time.perf_counter()
            await provider.sample(params(8, r), timeout=60)
            one.append(time.perf_counter() - started)
            started = time.perf_counter()
            for k in range(8):
                await provider.sample(params(1, 1000 * r + k), timeout=60)
            eight.append(time.perf_counter() - started)
        tokens = provider.estimate_input_tokens(params(1, 0))
        await provider.aclose()
        return {
            "hf_n8_one_prefill_ms": statistics.median(one) * 1e3,
            "hf_8_calls_n1_ms": statistics.median(eight) * 1e3,
            "hf_prefill_speedup": statistics.median(eight) / statistics.median(one),
            "hf_prompt_tokens": tokens,
        }

    return asyncio.run(run())
