"""The gateway benchmark's measurements over gRPC, 1-4 of ``bench/gateway.py`` (which says what
each measures and runs them): a gateway process, requests in flight, its CPU counters."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import yaml
from backends import Backend

from omniopd.proto.v1 import gateway_pb2 as pb

N_SAMPLES = 8  # teacher continuations per request, the design's default M
MAX_TOKENS = 16  # about one chunk
PARTIAL = "First add the units: "  # the student's answer so far, continued by the teacher
BACKEND_S = 0.05  # the fixed latency of the backend in the latency and cost phases
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
GATEWAY_BENCH = Path(__file__).resolve().parent / "gateway.py"  # its --sdk-reference mode


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
        [
            sys.executable,
            str(GATEWAY_BENCH),
            "--sdk-reference",
            backend_url,
            "--requests",
            str(requests),
        ],
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
