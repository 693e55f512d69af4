"""Benchmark of the teacher gateway: what it adds, what it costs, how it holds limits.

One run measures, each against its baseline in the same run:

1. latency added: ``SampleChunks`` through the gateway vs. the same request sent straight to
   the backend with the ``openai`` SDK's raw request method on its aiohttp transport (the
   SDK's leanest request path, on aiohttp as the gateway's own client is); fresh prompts (no
   cache hits), 8 in flight (their starts spread over one backend latency, so they do not
   move in lockstep), backend with a fixed 50 ms latency (``bench/backends.py``);
2. cost: the gateway process's own CPU time per cache-miss request with 64 in flight, read from
   its CPU counters (``/proc/PID/stat``), since client, gateway and backend share the machine;
   for an ``openai`` chat teacher with no limits, and for the configuration users run in front
   of a local server: ``openai_completions`` with the teacher's ``tokenizer`` (the toy world's,
   and SmolLM2's 49,152-token one) and requests, input- and output-token per-minute limits.
   Absolute CPU times move between machines, so each is also given as a ratio to the CPU that
   the ``openai`` SDK itself spends per call of the same request (``completions.create``, its
   default client, 64 in flight, in a process of its own). The four are measured in turn, five
   rounds, and each figure is its median;
3. cache hits through ``StreamChunks``: replies per second (64 in flight) and the latency of one
   hit (one in flight);
4. concurrency: 512 requests to a teacher limited to 64 concurrent calls, 200 ms backend:
   wall time over the ideal 8 waves x 200 ms, and the most calls the backend saw at once; from
   the backend's timeline, where the time beyond the ideal went (until the first call, the
   spread of the last wave, from the last answer to the last reply); and, for reference, the
   same 512 requests sent straight to the backend with the SDK, 64 at a time;
5. ``hf``: ``n=8`` from one prefill vs. 8 separate ``n=1`` calls on the toy teacher;
6. the limits' own cost: one admission through three rate limits and a concurrency slot, with
   the ``limits`` library in memory and in Redis (is it fast enough to keep?).

Prints a table, then as its last line one JSON object with the figures. Run:

    .venv/bin/python bench/gateway.py            # about a minute
    .venv/bin/python bench/gateway.py --quick    # fewer requests, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import Backend

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

N_SAMPLES = 8  # teacher continuations per request, the design's default M
MAX_TOKENS = 16  # about one chunk
PARTIAL = "First add the units: "  # the student's answer so far, continued by the teacher
BACKEND_S = 0.05  # the fixed latency of the backend in the latency and cost phases
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def question(tag: str, i: int) -> str:
    return f"[{tag} {i}] What is {i} + {2 * i}? Show your work, then give the answer."


def sample_request(teacher: str, content: str, **fields) -> pb.SampleRequest:
    return pb.SampleRequest(
        teacher=teacher,
        messages=[pb.Message(role="user", content=content)],
        n=N_SAMPLES,
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        **fields,
    )


class Gateway:
    """``omniopd-gateway`` in its own process, so its CPU counters are its own."""

    def __init__(self, config: dict, workdir: Path) -> None:
        path = workdir / "teachers.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "omniopd.gateway", "--config", str(path), "--port", "0"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.port = self._wait_for_port()
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_for_port(self) -> int:
        assert self.proc.stderr is not None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if match := re.search(r"serving \d+ teacher\(s\) on [\d.]+:(\d+)", line):
                return int(match[1])
        raise RuntimeError("the gateway did not start:\n" + "".join(lines))

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "WARNING" in line or "ERROR" in line:
                print("gateway:", line.rstrip(), file=sys.stderr)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


async def in_flight(count: int, width: int, one, spread_s: float = 0.0) -> list[float]:
    """Run ``one(i)`` for i < count with ``width`` at once; each call's latency in seconds.

    ``spread_s``: start the ``width`` workers evenly over this time, so that against a backend
    with a fixed latency they do not stay in lockstep (all answers landing at once and queueing
    behind each other measures the burst, not the per-request overhead).
    """
    latencies: list[float] = []
    next_i = 0

    async def worker(k: int) -> None:
        nonlocal next_i
        await asyncio.sleep(k * spread_s / width)
        while next_i < count:
            i = next_i
            next_i += 1
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(k) for k in range(width)))
    return latencies


async def latency_added(stub, backend_url: str, requests: int) -> dict:
    """p50/p99 through the gateway minus straight to the backend, 8 in flight, fresh prompts."""
    import openai

    client = openai.AsyncOpenAI(
        api_key="EMPTY",
        base_url=f"{backend_url}/v1",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    run = uuid.uuid4().hex[:8]

    async def direct(i: int) -> None:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": question(f"d{run}", i)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 1.0,
            "top_p": 1.0,
            "n": N_SAMPLES,
        }
        raw = await client.post("/chat/completions", body=body, cast_to=bytes)
        json.loads(raw)

    async def through(i: int) -> None:
        await stub.SampleChunks(sample_request("fast", question(f"g{run}", i)))

    await in_flight(64, 8, direct)  # warm both paths up
    await in_flight(64, 8, lambda i: through(10**6 + i))
    gateway: list[float] = []
    straight: list[float] = []
    rounds = 4
    for r in range(rounds):  # interleaved, so drift in the machine's load hits both
        straight += await in_flight(
            requests // rounds, 8, lambda i, r=r: direct(r * 10**5 + i), spread_s=BACKEND_S
        )
        gateway += await in_flight(
            requests // rounds, 8, lambda i, r=r: through(r * 10**5 + i), spread_s=BACKEND_S
        )
    await client.close()
    ms = {
        "gateway_p50_ms": percentile(gateway, 50) * 1e3,
        "gateway_p99_ms": percentile(gateway, 99) * 1e3,
        "direct_p50_ms": percentile(straight, 50) * 1e3,
        "direct_p99_ms": percentile(straight, 99) * 1e3,
    }
    ms["added_p50_ms"] = ms["gateway_p50_ms"] - ms["direct_p50_ms"]
    ms["added_p99_ms"] = ms["gateway_p99_ms"] - ms["direct_p99_ms"]
    return ms


async def cpu_per_request(
    stub, gateway: Gateway, requests: int, teacher: str = "fast", partial: str = ""
) -> dict:
    """The gateway process's CPU per cache-miss request to ``teacher``, 64 in flight."""
    run = uuid.uuid4().hex[:8]

    def one(tag: str):
        return lambda i: stub.SampleChunks(
            sample_request(teacher, question(f"{tag}{run}", i), partial_answer=partial)
        )

    await in_flight(128, 64, one("w"))
    before, started = gateway.cpu(), time.perf_counter()
    await in_flight(requests, 64, one("c"))
    wall = time.perf_counter() - started
    used = gateway.cpu() - before
    return {
        "cpu_ms_per_request": used / requests * 1e3,
        "miss_requests_per_s": requests / wall,
    }


async def cpu_costs(
    stub, gateway: Gateway, backend_url: str, requests: int, local: list[str], rounds: int = 5
) -> dict:
    """CPU per cache miss of each teacher and of the SDK alone, interleaved over ``rounds``
    (the machine's load drifts; each figure is the median of its rounds)."""
    teachers = {"": ("fast", ""), **{f"local_{n}_": (f"local-{n}", PARTIAL) for n in local}}
    costs: dict[str, list[float]] = {key: [] for key in (*teachers, "sdk")}
    rates: list[float] = []
    for _ in range(rounds):
        for key, (teacher, partial) in teachers.items():
            cost = await cpu_per_request(stub, gateway, requests // rounds, teacher, partial)
            costs[key].append(cost["cpu_ms_per_request"])
            if not key:
                rates.append(cost["miss_requests_per_s"])
        costs["sdk"].append(
            await asyncio.to_thread(sdk_cpu_per_call, backend_url, requests // rounds)
        )
    sdk = statistics.median(costs.pop("sdk"))
    out = {"sdk_cpu_ms_per_call": sdk, "miss_requests_per_s": statistics.median(rates)}
    for key, values in costs.items():
        out[f"{key}cpu_ms_per_request"] = statistics.median(values)
        out[f"{key}cpu_over_sdk"] = statistics.median(values) / sdk
    return out


def sdk_cpu_per_call(backend_url: str, requests: int) -> float:
    """CPU ms the ``openai`` SDK spends per ``completions.create`` of the same request (n=8,
    16 tokens, 64 in flight), measured in a process of its own (``--sdk-reference``)."""
    out = subprocess.run(
        [sys.executable, __file__, "--sdk-reference", backend_url, "--requests", str(requests)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["sdk_cpu_ms_per_call"]


def sdk_reference(backend_url: str, requests: int) -> None:
    """Child process: the SDK's own CPU per call (see :func:`sdk_cpu_per_call`)."""
    import openai

    async def run() -> float:
        client = openai.AsyncOpenAI(api_key="EMPTY", base_url=f"{backend_url}/v1", max_retries=0)
        tag = uuid.uuid4().hex[:8]

        def one(i: int):
            return client.completions.create(
                model="bench",
                prompt=question(tag, i) + PARTIAL,
                n=N_SAMPLES,
                max_tokens=MAX_TOKENS,
                temperature=1.0,
                top_p=1.0,
            )

        await in_flight(128, 64, one)  # warm up
        before = time.process_time()
        await in_flight(requests, 64, lambda i: one(10**6 + i))
        used = time.process_time() - before
        await client.close()
        return used / requests * 1e3

    print(json.dumps({"sdk_cpu_ms_per_call": asyncio.run(run())}))


async def cache_hits(stub, distinct: int, replies: int, pings: int) -> dict:
    """Replies per second of cache hits on one stream (64 in flight), and one hit's latency."""
    run = uuid.uuid4().hex[:8]
    asks = [sample_request("fast", question(f"h{run}", i)) for i in range(distinct)]
    await in_flight(distinct, 32, lambda i: stub.SampleChunks(asks[i]))  # fill the cache

    window = asyncio.Semaphore(64)
    sent_at: dict[str, float] = {}

    async def source():
        for i in range(replies):
            await window.acquire()
            ask = pb.SampleRequest()
            ask.CopyFrom(asks[i % distinct])
            ask.request_id = str(i)
            sent_at[ask.request_id] = time.perf_counter()
            yield ask

    started = time.perf_counter()
    cached = 0
    async for reply in stub.StreamChunks(source()):
        cached += reply.cached
        window.release()
    throughput = replies / (time.perf_counter() - started)

    # One in flight: the latency of a hit, request to reply, on an open stream.
    queue: asyncio.Queue[pb.SampleRequest | None] = asyncio.Queue()

    async def one_at_a_time():
        while (ask := await queue.get()) is not None:
            yield ask

    call = stub.StreamChunks(one_at_a_time())
    latencies = []
    for i in range(pings):
        started = time.perf_counter()
        await queue.put(asks[i % distinct])
        reply = await call.read()
        latencies.append(time.perf_counter() - started)
        cached += reply.cached
    await queue.put(None)
    await call.read()  # end of stream
    return {
        "cache_hits_per_s": throughput,
        "cache_hit_p50_ms": percentile(latencies, 50) * 1e3,
        "cache_hit_p99_ms": percentile(latencies, 99) * 1e3,
        "cache_hit_share": cached / (replies + pings),
    }


def where_time_went(slow: Backend, started: float, replies_done: float) -> dict:
    """From the backend's timeline: how long until its first call, how spread the last of the
    waves of calls was, and how long from its last answer to the client's last reply (ms)."""
    timeline = slow.timeline()
    arrived = sorted(timeline["reset_at"] + t for t in timeline["arrived"])
    answered = sorted(timeline["reset_at"] + t for t in timeline["answered"])
    last_wave = arrived[-(len(arrived) % 64 or 64) :]
    return {
        "first_call_ms": (arrived[0] - started) * 1e3,
        "last_wave_spread_ms": (last_wave[-1] - last_wave[0]) * 1e3,
        "tail_ms": (replies_done - answered[-1]) * 1e3,
    }


async def concurrency(stub, slow: Backend, total: int, limit: int, delay_s: float) -> dict:
    """``total`` requests at once to a teacher limited to ``limit`` calls: wall over ideal.

    For reference, the same requests are also sent straight to the backend with the ``openai``
    SDK, ``limit`` at a time (no gateway): what the client and the backend alone achieve on
    this machine. Both runs are broken down with the backend's timeline.
    """
    import openai

    ideal = -(-total // limit) * delay_s
    run = uuid.uuid4().hex[:8]
    client = openai.AsyncOpenAI(
        api_key="EMPTY",
        base_url=f"{slow.url}/v1",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    window = asyncio.Semaphore(limit)

    async def direct(i: int) -> None:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": question(f"r{run}", i)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 1.0,
            "top_p": 1.0,
            "n": N_SAMPLES,
        }
        async with window:
            json.loads(await client.post("/chat/completions", body=body, cast_to=bytes))

    slow.reset()
    started = time.monotonic()
    await asyncio.gather(*(direct(i) for i in range(total)))
    direct_wall = time.monotonic() - started
    direct_parts = where_time_went(slow, started, started + direct_wall)
    await client.close()

    slow.reset()
    started = time.monotonic()
    replies = await asyncio.gather(
        *(stub.SampleChunks(sample_request("slow", question(f"s{run}", i))) for i in range(total))
    )
    wall = time.monotonic() - started
    assert all(len(r.chunks) == N_SAMPLES for r in replies)
    parts = where_time_went(slow, started, started + wall)
    stats = slow.stats()
    return {
        "concurrency_wall_s": wall,
        "concurrency_ideal_s": ideal,
        "concurrency_wall_over_ideal": wall / ideal,
        "backend_max_in_flight": stats["max_in_flight"],
        **{f"concurrency_{k}": v for k, v in parts.items()},
        "concurrency_direct_wall_over_ideal": direct_wall / ideal,
        **{f"concurrency_direct_{k}": v for k, v in direct_parts.items()},
    }


# Per-minute limits a user sets in front of a local server; high enough never to make a
# request wait here, so that what is measured is their cost, not their waiting.
USER_LIMITS = {
    "requests_per_minute": 10**6,
    "input_tokens_per_minute": 10**9,
    "output_tokens_per_minute": 10**9,
}


async def measure_gateway(args: argparse.Namespace, workdir: Path, tokenizers: dict) -> dict:
    """Every gateway phase; ``tokenizers``: name -> folder, one ``openai_completions`` teacher
    each, as a user runs it in front of a local server (see the module docstring)."""
    with Backend(delay_s=BACKEND_S) as fast, Backend(delay_s=0.2) as slow:
        local = [
            {
                "name": f"local-{name}",
                "provider": "openai_completions",
                "model": "bench",
                "base_url": f"{fast.url}/v1",
                "tokenizer": str(folder),
                "limits": USER_LIMITS,
            }
            for name, folder in tokenizers.items()
        ]
        config = {
            "teachers": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "model": "bench",
                    "base_url": f"{fast.url}/v1",
                },
                {
                    "name": "slow",
                    "provider": "openai",
                    "model": "bench",
                    "base_url": f"{slow.url}/v1",
                    "limits": {"max_concurrency": 64, "max_queue_wait_s": 60},
                },
                *local,
            ],
        }
        gateway = Gateway(config, workdir)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                stub = pb_grpc.TeacherGatewayStub(channel)
                out = await latency_added(stub, fast.url, args.requests)
                out |= await cpu_costs(stub, gateway, fast.url, args.requests * 3, [*tokenizers])
                out |= await cache_hits(stub, 256, args.requests * 5, args.requests)
                out |= await concurrency(stub, slow, 512, 64, 0.2)
        finally:
            gateway.stop()
    return out


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


def table(r: dict) -> str:
    rows = [
        ("latency added p50 (8 in flight)", f"{r['added_p50_ms']:.2f} ms", "<= 1 ms",
         f"gateway {r['gateway_p50_ms']:.1f} / direct {r['direct_p50_ms']:.1f} ms"),
        ("latency added p99", f"{r['added_p99_ms']:.2f} ms", "<= 5 ms",
         f"gateway {r['gateway_p99_ms']:.1f} / direct {r['direct_p99_ms']:.1f} ms"),
        ("gateway CPU per miss (64 in flight)", f"{r['cpu_ms_per_request']:.2f} ms", "<= 1 ms",
         f"{r['miss_requests_per_s']:.0f} misses/s; openai chat, no limits; "
         f"{r['cpu_over_sdk']:.2f}x the SDK's own"),
        *[(f"  openai_completions, {name} tokenizer",
           f"{r[f'local_{name}_cpu_ms_per_request']:.2f} ms", "<= 1 ms",
           f"3 per-minute limits, partial answer; "
           f"{r[f'local_{name}_cpu_over_sdk']:.2f}x the SDK's own")
          for name in ("toy", "smollm2")],
        ("openai SDK CPU per call (reference)", f"{r['sdk_cpu_ms_per_call']:.2f} ms", "",
         "completions.create, n=8, 64 in flight, its own process"),
        ("cache hits via StreamChunks", f"{r['cache_hits_per_s']:.0f} /s", ">= 1000 /s",
         f"hit share {r['cache_hit_share']:.3f}"),
        ("cache hit latency p50 (1 in flight)", f"{r['cache_hit_p50_ms']:.2f} ms", "< 1 ms",
         f"p99 {r['cache_hit_p99_ms']:.2f} ms"),
        ("512 req, 64 slots, 200 ms: wall/ideal", f"{r['concurrency_wall_over_ideal']:.3f}",
         "<= 1.2", f"{r['concurrency_wall_s']:.2f} s vs {r['concurrency_ideal_s']:.2f} s, "
         f"backend saw <= {r['backend_max_in_flight']} at once"),
        ("  its parts: first call, last wave, tail",
         f"{r['concurrency_first_call_ms']:.0f}/{r['concurrency_last_wave_spread_ms']:.0f}/"
         f"{r['concurrency_tail_ms']:.0f} ms", "",
         "the same without gateway (SDK, 64 at a time): "
         f"{r['concurrency_direct_wall_over_ideal']:.3f}, "
         f"{r['concurrency_direct_first_call_ms']:.0f}/"
         f"{r['concurrency_direct_last_wave_spread_ms']:.0f}/"
         f"{r['concurrency_direct_tail_ms']:.0f} ms"),
        ("hf n=8 one prefill vs 8 x n=1", f"{r['hf_prefill_speedup']:.2f}x", ">= 2x",
         f"{r['hf_n8_one_prefill_ms']:.1f} vs {r['hf_8_calls_n1_ms']:.1f} ms, "
         f"{r['hf_prompt_tokens']} prompt tokens"),
        ("limits per admission (3 rates + slots)", f"{r['limiter_memory_us']:.0f} us", "",
         "in memory; in Redis: " + (f"{r['limiter_redis_us']:.0f} us"
                                    if r["limiter_redis_us"] is not None else "no Redis here")),
    ]  # fmt: skip
    rows.append(("machine load (1-min average)", f"{r['load_1m_start']:.2f}", "",
                 f"at the start; {r['load_1m_end']:.2f} at the end, on "
                 f"{os.cpu_count()} CPUs"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("measure", "result", "goal", "detail")
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=800, help="requests per latency phase")
    parser.add_argument("--hf-model", type=Path, help="a local model dir (default: toy teacher)")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    parser.add_argument("--sdk-reference", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_reference:
        sdk_reference(args.sdk_reference, args.requests)
        return
    if args.quick:
        args.requests = 160
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_start = os.getloadavg()[0]  # the machine is shared: the load says how quiet it was
    with tempfile.TemporaryDirectory(prefix="omniopd-bench-gw-") as tmp:
        workdir = Path(tmp)
        from omniopd.pretrained import ensure_pretrained
        from omniopd.toy import build_tiny

        toy = build_tiny(workdir / "toy").teacher
        tokenizers = {"toy": toy, "smollm2": ensure_pretrained("smollm2")}
        results = asyncio.run(measure_gateway(args, workdir, tokenizers))
        results |= hf_speedup(args.hf_model or toy, repeats=3 if args.quick else 7)
        results |= limiter_cost(500 if args.quick else 2000)
    results |= {"load_1m_start": load_start, "load_1m_end": os.getloadavg()[0]}
    print(table(results))
    keys = [
        "added_p50_ms",
        "added_p99_ms",
        "cpu_ms_per_request",
        "cache_hits_per_s",
        "cache_hit_p50_ms",
        "concurrency_wall_over_ideal",
        "hf_prefill_speedup",
    ]
    figures = {k: round(results[k], 4) for k in keys}
    figures |= {
        k: round(v, 4) if isinstance(v, float) else v for k, v in results.items() if k not in keys
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
