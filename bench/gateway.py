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
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gateway_inprocess import hf_speedup, limiter_cost
from _gateway_load import (
    BACKEND_S,
    Gateway,
    cache_hits,
    concurrency,
    cpu_costs,
    latency_added,
    sdk_reference,
)
from backends import Backend

from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

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
