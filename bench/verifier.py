"""Verifier throughput and latency against raw sentence-transformers, in one run.

    .venv/bin/python bench/verifier.py [--groups 96] [--clients 32] [--rounds 5]

Starts ``omniopd-verifier`` itself (a separate process on a free port, default settings, memory
cache) and stops it at the end. On the same texts (groups of K = 4 drafts and M = 8 teacher
chunks of about 16 tokens, every text distinct), it measures:

- raw: ``SentenceTransformer.encode(texts, batch_size=64)`` in this process;
- service: ``POST /v1/score`` from ``--clients`` concurrent clients, the texts never seen before;
- cached: the same requests again, every embedding now in the server's cache;
- single: p50/p99 latency of one small request (one group, new texts) on the idle server;
- lexical: ``/v1/score`` with ``metric=lexical`` from the same concurrent clients.

Raw and service alternate for ``--rounds`` rounds on fresh texts and the median ratio is kept,
so a colleague's job starting mid-run skews one round, not the result. Prints a table, then as
its last line one JSON object with the figures and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

K, M = 4, 8
WORDS = [
    "so",
    "we",
    "add",
    "carry",
    "the",
    "digit",
    "then",
    "multiply",
    "both",
    "sides",
    "by",
    "which",
    "gives",
    "total",
    "sum",
]


def chunk(tag: str, i: int) -> str:
    """About 16 MiniLM tokens of arithmetic-flavoured text, unique to (tag, i)."""
    a, b = 17 + i % 83, 5 + (i * 7) % 61
    words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5))
    return f"{words} {a} and {b} to get {a + b} ({tag}{i})"


def make_groups(tag: str, n: int) -> list[dict]:
    return [
        {
            "id": f"{tag}-{g}",
            "drafts": [chunk(f"{tag}d{g}.", k) for k in range(K)],
            "teacher": [chunk(f"{tag}t{g}.", j) for j in range(M)],
        }
        for g in range(n)
    ]


def texts_of(groups: list[dict]) -> list[str]:
    return [t for g in groups for t in (*g["drafts"], *g["teacher"])]


def start_server() -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIOPD_VERIFIER_")}
    env.pop("REDIS_URL", None)
    env["HF_HUB_OFFLINE"] = "1"
    script = Path(sys.executable).parent / "omniopd-verifier"
    proc = subprocess.Popen(
        [str(script), "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 120
    url = None
    while url is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the verifier did not start:\n" + "".join(lines))
        found = [m.group(1) for line in lines if (m := re.search(r"verifier on (\S+)", line))]
        url = found[0] if found else None
        time.sleep(0.05)
    while not httpx.get(f"{url}/readyz").is_success:
        if time.monotonic() > deadline:
            raise RuntimeError("the verifier never became ready:\n" + "".join(lines))
        time.sleep(0.1)
    return proc, url


async def score_all(url: str, bodies: list[dict], clients: int) -> tuple[float, list[dict]]:
    """Send every body from ``clients`` concurrent workers; (seconds, responses)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    out: list[dict] = [{}] * len(bodies)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                response = await http.post("/v1/score", json=bodies[i])
                response.raise_for_status()
                out[i] = response.json()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, out


def bodies_for(groups: list[dict], per_request: int, **params) -> list[dict]:
    return [
        {"groups": groups[i : i + per_request], **params}
        for i in range(0, len(groups), per_request)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=96, help="groups per round")
    parser.add_argument("--per-request", type=int, default=1, help="groups per request")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=100, help="single-request samples")
    args = parser.parse_args()

    load_before = os.getloadavg()
    proc, url = start_server()
    try:
        from sentence_transformers import SentenceTransformer

        from omniopd.verifier.embedder import resolve_model
        from omniopd.verifier.protocol import DEFAULT_MODEL

        model = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")
        tokens = [
            len(ids) - 2 for ids in model.tokenizer([chunk("x", i) for i in range(64)])["input_ids"]
        ]
        # Warm both sides on texts used nowhere else.
        model.encode(texts_of(make_groups("warm", 8)), batch_size=64)
        asyncio.run(score_all(url, bodies_for(make_groups("warmup", 64), 1), args.clients))

        rounds = []
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            groups = make_groups(f"r{r}", args.groups)
            texts = texts_of(groups)
            start = time.perf_counter()
            model.encode(texts, batch_size=64, show_progress_bar=False)
            raw_s = time.perf_counter() - start
            bodies = bodies_for(groups, args.per_request)
            service_s, _ = asyncio.run(score_all(url, bodies, args.clients))
            cached_s, cached = asyncio.run(score_all(url, bodies, args.clients))
            hits = sum(o["usage"]["cache_hits"] for o in cached)
            assert hits == len(texts), f"cached round found {hits} of {len(texts)} in the cache"
            rounds.append(
                {
                    "raw": len(texts) / raw_s,
                    "service": len(texts) / service_s,
                    "cached": len(texts) / cached_s,
                    "load": load,
                }
            )

        lexical_groups = make_groups("lex", args.groups)
        lexical_s, _ = asyncio.run(
            score_all(
                url, bodies_for(lexical_groups, args.per_request, metric="lexical"), args.clients
            )
        )
        lexical = len(texts_of(lexical_groups)) / lexical_s

        latencies = []
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(args.single):
                body = {"groups": make_groups(f"single{i}-", 1)}
                start = time.perf_counter()
                http.post("/v1/score", json=body).raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    service_over_raw = statistics.median(r["service"] / r["raw"] for r in rounds)
    cached_over_uncached = statistics.median(r["cached"] / r["service"] for r in rounds)
    texts_per_round = args.groups * (K + M)
    print(
        f"verifier benchmark: {args.rounds} rounds of {args.groups} groups (K={K}, M={M}) = "
        f"{texts_per_round} texts of {statistics.mean(tokens):.1f} tokens on average; "
        f"{args.clients} clients, {args.per_request} group(s) per request; cpus={os.cpu_count()}, "
        f"load average before {load_before[0]:.2f}"
    )
    print(
        f"{'round':>5} {'raw texts/s':>12} {'service':>10} {'cached':>10} {'svc/raw':>8} {'cached/svc':>10} {'load':>5}"
    )
    for i, r in enumerate(rounds):
        print(
            f"{i:>5} {r['raw']:>12.0f} {r['service']:>10.0f} {r['cached']:>10.0f} "
            f"{r['service'] / r['raw']:>8.2f} {r['cached'] / r['service']:>10.1f} {r['load']:>5.2f}"
        )
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"single request (1 group, new texts), {args.single} samples: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(f"lexical metric: {lexical:.0f} texts/s")
    print(
        json.dumps(
            {
                "service_over_raw": round(service_over_raw, 3),
                "cached_over_uncached": round(cached_over_uncached, 2),
                "single_p50_ms": round(p50, 2),
                "single_p99_ms": round(p99, 2),
                "lexical_texts_per_s": round(lexical, 1),
                "raw_texts_per_s": round(med("raw"), 1),
                "service_texts_per_s": round(med("service"), 1),
                "cached_texts_per_s": round(med("cached"), 1),
                "texts_per_round": texts_per_round,
                "mean_tokens_per_text": round(statistics.mean(tokens), 1),
                "clients": args.clients,
                "groups_per_request": args.per_request,
                "rounds": args.rounds,
                "load_average_before": round(load_before[0], 2),
                "load_average_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
