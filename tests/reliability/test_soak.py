"""Soaks: many concurrent clients for a fixed time against the gateway and the verifier, each
running as its own process, with zero errors and bounded memory.

Three soaks, each ``scale.soak_clients`` closed-loop clients for ``scale.soak_s`` seconds after
``scale.soak_warmup_s`` of warm-up (64 clients for 120 s in ``make reliability``):

* gateway cache misses: every request is new, so every one goes to the backend, here the
  suite's OpenAI-compatible stand-in (``tests/gateway/standins``: a LOCAL server speaking the
  Chat Completions wire format, not OpenAI) answering after a fixed 50 ms, in its own process;
* gateway cache hits: a few requests, repeated;
* the verifier with the packaged all-MiniLM-L6-v2 on CPU: every group carries new texts, plus a
  few chunks shared across groups (as a trainer's teacher chunks repeat), so the embedding
  cache both hits and misses and the model embeds ten new texts per request.

Each asserts zero failed requests, that the requests were what the soak says (the gateway's and
verifier's own metrics, the stand-in's call count) and that the server's resident memory grew by
less than 10% from the end of the warm-up to the end. Latencies are measured at the client and
recorded in the ledger, never asserted.

The gateway's teacher has no rate or concurrency limit (unlimited is the configured default),
so the stand-in sees every client's request at once; the test checks that no request waited
for a limit, was retried or failed at the backend.

Both services' in-memory caches are bounded below their defaults (the gateway's to
``CACHE_ENTRIES`` replies, the verifier's to ``EMBEDDING_CACHE`` vectors), to a size the warm-up
fills: what is measured is the steady state of a full cache, as in a long run, not a cache
filling up, which is growth by design and capped by its size (the verifier's default 20,000
vectors take about 48 MB, against some 640 MB resident).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc
from tests.gateway.standins.textgen import WORDS
from tests.reliability.soak import (
    Process,
    SoakResult,
    WrongReply,
    clean_env,
    run_soak,
    scrape,
    standin_calls,
    start_gateway,
    start_standin,
    start_verifier,
)

pytestmark = pytest.mark.slow

KEY_ENV = "OMNIOPD_SOAK_STANDIN_KEY"
TEACHER = "soak"
N = 8  # teacher continuations per request (the design's M)
MAX_TOKENS = 16  # about one chunk
DELAY_MS = 50.0
CACHE_ENTRIES = 128
HOT = 16  # distinct requests of the hits soak
DEADLINE_S = 120.0  # per request: far above any latency seen, so a slow reply is not an error
RSS_LIMIT = 0.10


@dataclass
class GatewayUnderTest:
    process: Process
    port: int
    metrics_url: str
    standin_url: str

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def probe(self) -> dict[str, float]:
        return {**scrape(self.metrics_url), "standin_calls": standin_calls(self.standin_url)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[GatewayUnderTest]:
    env = clean_env(**{KEY_ENV: "sk-soak-standin-key"})
    standin, url = start_standin(DELAY_MS, KEY_ENV, env)
    teacher = {
        "name": TEACHER,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": f"{url}/v1",
        "api_key_env": KEY_ENV,
        "max_n": N,
        "max_tokens": MAX_TOKENS,
        "timeout_s": DEADLINE_S,
    }
    config = {"teachers": [teacher], "cache": {"max_entries": CACHE_ENTRIES}}
    path = Path(tmp_path_factory.mktemp("soak")) / "teachers.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        process, port, metrics_url = start_gateway(path, env)
    except BaseException:
        standin.stop()
        raise
    try:
        yield GatewayUnderTest(process, port, metrics_url, url)
    finally:
        process.stop()
        standin.stop()


def sample(tag: str, content: str) -> pb.SampleRequest:
    return pb.SampleRequest(
        request_id=tag,
        teacher=TEACHER,
        messages=[pb.Message(role="user", content=content)],
        partial_answer="First add the units:",
        n=N,
        max_tokens=MAX_TOKENS,
        temperature=1.0,
    )


def question(tag: str) -> str:
    """The prompt of request ``tag``: the same tag, the same prompt (and cache key)."""
    return f"[{tag}] Add the numbers of this tag, carrying where needed. Show your work."


async def gateway_soak(
    gw: GatewayUnderTest, scale, name: str, pick, expect_cached: bool
) -> SoakResult:
    """One gateway soak; ``pick(client, i)`` names the request a client sends at step ``i``."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") for _ in range(scale.soak_clients)
    ]
    stubs = [pb_grpc.TeacherGatewayStub(ch) for ch in channels]

    async def call(client: int, i: int, measured: bool) -> None:
        tag = pick(client, i)
        rid = f"{tag}/{client}/{i}"
        reply = await stubs[client].SampleChunks(sample(rid, question(tag)), timeout=DEADLINE_S)
        if reply.request_id != rid or len(reply.chunks) != N or reply.HasField("error"):
            raise WrongReply(f"{rid}: {reply}")
        if measured and reply.cached != expect_cached:
            raise WrongReply(f"{rid}: cached={reply.cached}, expected {expect_cached}")

    try:
        return await run_soak(
            name,
            call,
            pid=gw.pid,
            clients=scale.soak_clients,
            warmup_s=scale.soak_warmup_s,
            soak_s=scale.soak_s,
            probe=gw.probe,
        )
    finally:
        for ch in channels:
            await ch.close()


def check(result: SoakResult) -> None:
    """What every soak must show: requests done, none failed, memory bounded."""
    print(result.summary())
    assert result.measured.requests > 0
    assert not result.warmup.errors, f"errors during the warm-up: {dict(result.warmup.errors)}"
    assert not result.measured.errors, f"errors during the soak: {dict(result.measured.errors)}"
    assert result.rss_growth < RSS_LIMIT, (
        f"resident memory grew {100 * result.rss_growth:.1f}% "
        f"({result.rss_mb_start:.1f} -> {result.rss_mb_end:.1f} MB)"
    )


def gateway_checks(result: SoakResult) -> dict[str, float]:
    """No request failed, waited for a limit or was retried, by the gateway's own count."""
    n = result.measured.requests
    assert result.change("omniopd_gateway_requests_total", teacher=TEACHER, code="OK") == n
    assert result.change("omniopd_gateway_requests_total", teacher=TEACHER) == n
    for family in ("backend_errors", "retries", "rate_limit_waits", "rate_limit_rejections"):
        assert result.change(f"omniopd_gateway_{family}_total") == 0, family
    return {
        k: result.change(f"omniopd_gateway_{k}_total", teacher=TEACHER)
        for k in ("cache_hits", "cache_misses", "shared_flights", "backend_calls")
    } | {"standin_calls": result.change("standin_calls")}


async def test_gateway_cache_misses(gateway, scale, ledger):
    """Every request is new: each is a cache miss and exactly one call to the 50 ms stand-in."""
    result = await gateway_soak(
        gateway, scale, "gateway misses (50 ms stand-in)", lambda c, i: f"miss-{c}-{i}", False
    )
    check(result)
    counts = gateway_checks(result)
    n = result.measured.requests
    assert counts["cache_misses"] == n, counts
    assert counts["backend_calls"] == n, counts
    assert counts["standin_calls"] == n, counts
    assert counts["cache_hits"] == 0 and counts["shared_flights"] == 0, counts
    # The cache was full before the measured phase began (see the module's docstring).
    assert result.warmup.requests >= CACHE_ENTRIES, result.warmup.requests
    result.record(
        ledger,
        backend_delay_ms=DELAY_MS,
        cache_max_entries=CACHE_ENTRIES,
        limits="none (unlimited)",
        **counts,
    )


async def test_gateway_cache_hits(gateway, scale, ledger):
    """A few requests over and over: after the warm-up every one is served from the cache."""
    result = await gateway_soak(
        gateway, scale, "gateway hits", lambda c, i: f"hot-{(c + i) % HOT}", True
    )
    check(result)
    counts = gateway_checks(result)
    n = result.measured.requests
    assert counts["cache_hits"] == n, counts
    assert counts["cache_misses"] == 0 and counts["backend_calls"] == 0, counts
    assert counts["standin_calls"] == 0, counts
    result.record(ledger, distinct_requests=HOT, **counts)


# --- the verifier ----------------------------------------------------------------------------

DRAFTS = 4  # the design's K
SHARED = 8  # teacher chunks that recur across groups
EMBEDDING_CACHE = 128  # vectors: the verifier's in-memory LRU, full before the warm-up ends
SHARED_PER_GROUP = 2


def chunk(*seed: int) -> str:
    """A chunk of about 16 words, different for every ``seed`` (which it names)."""
    h = abs(hash(seed))
    words = [WORDS[(h >> (3 * k)) % len(WORDS)] for k in range(12)]
    return f"step {'.'.join(map(str, seed))}: " + " ".join(words) + f" so it is {h % 1000}"


def score_group(client: int, i: int) -> dict:
    fresh = [chunk(client, i, j) for j in range(DRAFTS + N - SHARED_PER_GROUP)]
    shared = [chunk(-1, (client + i + j) % SHARED) for j in range(SHARED_PER_GROUP)]
    return {
        "context": f"Problem {client}-{i}: add the numbers and show your work.",
        "drafts": fresh[:DRAFTS],
        "teacher": fresh[DRAFTS:] + shared,
    }


@pytest.fixture(scope="module")
def verifier() -> Iterator[tuple[Process, str]]:
    process, url = start_verifier(
        clean_env(OMNIOPD_VERIFIER_DEVICE="cpu", OMNIOPD_VERIFIER_CACHE_SIZE=str(EMBEDDING_CACHE))
    )
    try:
        yield process, url
    finally:
        process.stop()


async def test_verifier(verifier, scale, ledger):
    """POST /v1/score with new texts in every group (and a few shared ones) from every client."""
    process, url = verifier
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    connector = aiohttp.TCPConnector(limit=scale.soak_clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def call(client: int, i: int, measured: bool) -> None:
            body = {"groups": [score_group(client, i)]}
            async with session.post(f"{url}/v1/score", json=body) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise WrongReply(f"HTTP {answer.status}: {text[:300]}")
            groups = json.loads(text)["groups"]
            if len(groups) != 1 or len(groups[0]["advantage"]) != DRAFTS:
                raise WrongReply(text[:300])

        result = await run_soak(
            "verifier /v1/score (all-MiniLM-L6-v2, CPU)",
            call,
            pid=process.proc.pid,
            clients=scale.soak_clients,
            warmup_s=scale.soak_warmup_s,
            soak_s=scale.soak_s,
            probe=lambda: scrape(f"{url}/metrics"),
        )
    check(result)
    n = result.measured.requests
    ok = result.change("omniopd_verifier_requests_total", route="/v1/score", status="200")
    assert ok == n == result.change("omniopd_verifier_requests_total", route="/v1/score")
    assert result.change("omniopd_verifier_rejected_total") == 0
    hits = result.change("omniopd_verifier_cache_hits_total")
    misses = result.change("omniopd_verifier_cache_misses_total")
    embedded = result.change("omniopd_verifier_texts_embedded_total")
    # Every fresh text went through the model; no text found in the cache did (a batch embeds
    # a text once, however many of its requests missed it).
    assert n * (DRAFTS + N - SHARED_PER_GROUP) <= embedded <= misses, (hits, misses, embedded)
    assert hits > 0, (hits, misses)
    # The embedding cache was full before the measured phase began.
    assert result.warmup.requests * (DRAFTS + N - SHARED_PER_GROUP) >= EMBEDDING_CACHE
    result.record(
        ledger,
        texts_per_request=DRAFTS + N,
        cache_hits=hits,
        cache_misses=misses,
        texts_embedded=embedded,
    )
