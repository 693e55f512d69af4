"""Redis killed (SIGKILL) and restarted under load: no failed request, the degraded period in the
metrics, cache and shared limits back after the restart.

A private ``redis-server`` (``--save "" --appendonly no``, so a restart comes back empty) on a
free port serves a real gateway (``tests/gateway/gwtools.serving``: reply cache, requests/min
and concurrency slots in Redis) and a real verifier (its uvicorn server on a thread, the packaged
all-MiniLM-L6-v2, its embedding cache in Redis only). The gateway's teacher is the ``anthropic``
provider in the SDK's wire format against a LOCAL STAND-IN of the Messages API
(``tests/gateway/standins``; not Anthropic's service), which counts the backend calls.

Several gateway clients (one gRPC channel each) and verifier clients keep sending before, during
and after each outage; some repeat earlier requests (cache hits while Redis is up), some are new.
Every request must succeed, throughout. The cache-error counters of both services show the
outage; recovery is polled for, not waited out: a new request twice, the second a hit, in each
service, then the gateway's requests/min counted and its concurrency leases taken in the new
(empty) Redis. With the load stopped, five new requests are exactly five units there.

The second test is the regression test for connections that sat idle in a pool while Redis
restarted: each must reconnect instead of failing a command and switching Redis off again.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc
from omniopd.verifier.api import build_app
from omniopd.verifier.embedder import Embedder
from omniopd.verifier.server import ServerThread as VerifierThread
from omniopd.verifier.serving import VerifierService
from omniopd.verifier.settings import VerifierSettings
from tests.gateway.gwtools import anthropic_teacher, serving
from tests.gateway.standins import anthropic_api
from tests.gateway.standins.server import Fault, ServerThread, StandIn

from .faults import PrivateRedis

pytestmark = pytest.mark.redis

KEY_ENV = "STANDIN_REDIS_RESTART_API_KEY"
KEY = "sk-ant-standin-redis-restart-5be0"
GATEWAY_CLIENTS = 6
VERIFIER_CLIENTS = 3
REPEATED = 6  # distinct requests each client repeats, so a working cache has hits
RECOVERY_TIMEOUT_S = 60.0  # polling gives up here; the services retry Redis every few seconds


@pytest.fixture
def redis_server():
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def standin():
    state = StandIn(api_key=KEY)
    server = ServerThread(anthropic_api.build_app(state), timeout_keep_alive=30).start()
    yield server, state
    server.stop()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder().load()


@pytest.fixture
def verifier(redis_server, embedder):
    prefix = f"omniopd-test:{uuid.uuid4().hex[:8]}:emb:"
    settings = VerifierSettings(
        redis_url=redis_server.url, redis_prefix=prefix, cache_size=0, token=None
    )
    service = VerifierService(settings, embedder=embedder)
    server = VerifierThread(build_app(service)).start()
    yield server
    server.stop()


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every request the load sent, by service: when it ended and how."""

    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    during_outage: Counter[str] = field(default_factory=Counter)  # served while Redis was away
    outage: bool = False

    def record(self, service: str, started: float, error: str | None) -> None:
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        if error is None:
            self.ok[service] += 1
            if self.outage:
                self.during_outage[service] += 1
        else:
            self.failures.append(f"{service}: {error}")


def question(client: int, i: int, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"Repeated question {client}-{rng.randrange(REPEATED)}: what is 6 * 7?"
    return f"New question {client}-{i}: what is {i} + {client}?"


async def gateway_client(address: str, client: int, tally: Tally, stop: asyncio.Event) -> None:
    rng = random.Random(client)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TeacherGatewayStub(channel)
        for i in itertools.count():
            if stop.is_set():
                return
            req = pb.SampleRequest(
                request_id=f"g{client}-{i}",
                teacher="claude",
                messages=[pb.Message(role="user", content=question(client, i, rng))],
                n=1,
                max_tokens=16,
            )
            started = time.monotonic()
            tally.sent["gateway"] += 1
            try:
                reply = await stub.SampleChunks(req, timeout=60)
            except grpc.aio.AioRpcError as err:
                tally.record("gateway", started, f"{err.code().name}: {err.details()}")
            else:
                bad = None if reply.chunks and reply.chunks[0].text else "empty reply"
                tally.record("gateway", started, bad)
            await asyncio.sleep(0.01)


def score_body(texts: list[str]) -> dict:
    return {"groups": [{"drafts": texts[:2], "teacher": texts[2:]}]}


async def verifier_client(url: str, client: int, tally: Tally, stop: asyncio.Event) -> None:
    rng = random.Random(100 + client)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for i in itertools.count():
            if stop.is_set():
                return
            texts = [f"{question(client, i, rng)} draft {k}" for k in range(3)]
            started = time.monotonic()
            tally.sent["verifier"] += 1
            try:
                response = await http.post("/v1/score", json=score_body(texts))
            except httpx.HTTPError as err:
                tally.record("verifier", started, f"{type(err).__name__}: {err}")
            else:
                bad = None if response.status_code == 200 else f"HTTP {response.status_code}"
                tally.record("verifier", started, bad and f"{bad}: {response.text[:200]}")
            await asyncio.sleep(0.02)


# -- metrics and probes ---------------------------------------------------------------------------


def verifier_metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def poll(check, what: str, timeout: float = RECOVERY_TIMEOUT_S, every: float = 0.1):
    """Await ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


# -- the test -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_redis_killed_and_restarted_under_load(
    redis_server, standin, verifier, monkeypatch, scale, ledger
):
    kills, outage_s = (3, 10.0) if scale.full else (1, 2.0)
    monkeypatch.setenv(KEY_ENV, KEY)
    server, state = standin
    state.reset()
    vserver = verifier
    gprefix = f"omniopd-test:{uuid.uuid4().hex[:8]}:gw:"
    limits = {"requests_per_minute": 1_000_000, "max_concurrency": 64, "max_queue_wait_s": 30}
    config = {"teachers": [anthropic_teacher(server.url, KEY_ENV, limits=limits, timeout_s=10)]}
    tally = Tally()
    stop = asyncio.Event()
    probes = 0
    cycles: list[dict] = []

    async with serving(config, redis_url=redis_server.url, redis_prefix=gprefix) as gw:

        def gw_errors() -> float:
            return gw.metric("omniopd_gateway_cache_errors_total")

        def v_errors() -> float:
            return verifier_metric(vserver.url, "omniopd_verifier_cache_errors_total")

        def limit_units() -> int:
            """Units of requests_per_minute the gateway counted in Redis (all window keys)."""
            with redis_server.client() as client:
                keys = list(client.scan_iter(match=f"{gprefix}limits*"))
                return sum(int(v) for v in client.mget(keys) if v is not None) if keys else 0

        def leases(count: int | None = None) -> bool:
            """Concurrency leases in Redis: exactly ``count``, or (None) at least one."""
            with redis_server.client() as client:
                held = client.zcard(f"{gprefix}slots:claude")
            return held >= 1 if count is None else held == count

        def fresh_request(content: str) -> pb.SampleRequest:
            return pb.SampleRequest(
                teacher="claude", messages=[pb.Message(role="user", content=content)], n=1
            )

        async def probe_gateway() -> bool:
            """A new request, twice: the second must come from the cache (one backend call)."""
            nonlocal probes
            content = f"Probe {uuid.uuid4().hex}: what is 2 + 2?"
            req = pb.SampleRequest(
                teacher="claude", messages=[pb.Message(role="user", content=content)], n=1
            )
            first = await gw.stub.SampleChunks(req, timeout=60)
            second = await gw.stub.SampleChunks(req, timeout=60)
            probes += 2
            calls = sum(1 for r in state.requests if content in str(r.body))
            return second.cached and not first.cached and calls == 1

        async def probe_verifier() -> bool:
            """New texts, twice: the second must find every embedding in Redis."""
            nonlocal probes
            texts = [f"probe {uuid.uuid4().hex} {k}" for k in range(3)]
            async with httpx.AsyncClient(base_url=vserver.url, timeout=60) as http:
                first = (await http.post("/v1/score", json=score_body(texts))).json()
                second = (await http.post("/v1/score", json=score_body(texts))).json()
            probes += 2
            return first["usage"]["cache_hits"] == 0 and second["usage"]["cache_hits"] == 3

        workers = [
            asyncio.create_task(gateway_client(gw.address, c, tally, stop))
            for c in range(GATEWAY_CLIENTS)
        ] + [
            asyncio.create_task(verifier_client(vserver.url, c, tally, stop))
            for c in range(VERIFIER_CLIENTS)
        ]
        try:
            # Warm: both caches work through Redis before the first kill.
            await poll(probe_gateway, "the gateway's cache before the kill")
            await poll(probe_verifier, "the verifier's cache before the kill")
            for cycle in range(1, kills + 1):
                before = (gw_errors(), await asyncio.to_thread(v_errors))
                redis_server.kill()
                tally.outage = True
                killed_at = time.monotonic()
                # The degraded period shows in both services' metrics.
                await poll(
                    lambda b=before: asyncio.to_thread(
                        lambda: gw_errors() > b[0] and v_errors() > b[1]
                    ),
                    "cache errors counted after the kill",
                )
                await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - killed_at)))
                await asyncio.to_thread(redis_server.start)
                restarted_at = time.monotonic()
                # Polled, not waited out: a new request twice, the second a hit, in each service.
                await poll(probe_gateway, f"the gateway's cache after restart {cycle}")
                gw_back = time.monotonic() - restarted_at
                await poll(probe_verifier, f"the verifier's cache after restart {cycle}")
                verifier_back = time.monotonic() - restarted_at
                tally.outage = False
                # Shared limits are back in Redis, which came back empty: the load's calls are
                # counted there again and take their concurrency leases there.
                await poll(lambda: asyncio.to_thread(limit_units), "rate limits in Redis")
                await poll(lambda: asyncio.to_thread(leases), "leases in Redis", every=0.01)
                limits_back = time.monotonic() - restarted_at
                errors = (gw_errors(), await asyncio.to_thread(v_errors))
                cycles.append(
                    {
                        "down_s": round(restarted_at - killed_at, 1),
                        "gateway_back_s": round(gw_back, 1),
                        "verifier_back_s": round(verifier_back, 1),
                        "limits_back_s": round(limits_back, 1),
                        "cache_errors": [int(errors[0] - before[0]), int(errors[1] - before[1])],
                    }
                )
        finally:
            stop.set()
            await asyncio.gather(*workers)

        # Exactly: with the load stopped, one new request is one backend call and one unit of
        # requests_per_minute in Redis, and a call under way holds a lease there.
        calls = len(state.requests)
        units = await asyncio.to_thread(limit_units)
        for i in range(5):
            reply = await gw.stub.SampleChunks(fresh_request(f"After {i}: 3 + {i}?"), timeout=60)
            assert reply.chunks and not reply.cached
        probes += 5
        assert len(state.requests) - calls == 5
        assert await asyncio.to_thread(limit_units) - units == 5
        state.inject(Fault(delay=1.0))
        slow = asyncio.ensure_future(
            gw.stub.SampleChunks(fresh_request("A slow one: 1 + 1?"), timeout=60)
        )
        await poll(lambda: asyncio.to_thread(leases, 1), "the slow call's lease", every=0.02)
        assert (await slow).chunks
        probes += 1
        assert await asyncio.to_thread(leases, 0)  # released in Redis

    assert not tally.failures, f"{len(tally.failures)} failed, e.g. {tally.failures[:3]}"
    requests = sum(tally.ok.values()) + probes
    assert all(tally.during_outage[s] > 0 for s in ("gateway", "verifier"))
    ledger.add(
        "redis restart",
        requests=requests,
        faults_injected=redis_server.kills,
        recovered=sum(tally.during_outage.values()),
        failed_alone=len(tally.failures),
        lost=sum(tally.sent.values()) - sum(tally.ok.values()) - len(tally.failures),
        notes={
            "recovered": "requests answered between a kill and both caches working again",
            "kills": redis_server.kills,
            "restarts": redis_server.starts - 1,
            "outage_s": outage_s,
            "served_while_degraded": dict(tally.during_outage),
            "served": dict(tally.ok),
            "cycles": cycles,
            "slowest_request_s": round(tally.slowest_s, 2),
        },
    )


# -- pooled connections across a restart ----------------------------------------------------------

POOL = 16  # operations at once, so each client holds this many pooled connections


@pytest.mark.parametrize("user", ["gateway cache", "rate limits", "slots", "verifier cache"])
async def test_every_pooled_connection_reconnects_after_a_restart(redis_server, user):
    """Connections that sat idle in a pool while Redis restarted must not fail a command.

    Each Redis user of the services first fills its pool (``POOL`` operations at once), Redis is
    SIGKILLed and started again with nothing touching it, then ``POOL`` operations at once
    reuse those connections: every one must reach the new Redis, none may open an outage.
    """
    from limits import RateLimitItemPerSecond

    from omniopd.gateway.cache import RedisCache as GatewayCache
    from omniopd.gateway.limits import RateStore, RedisSlots
    from omniopd.gateway.providers.base import Chunk, SampleResult
    from omniopd.verifier.cache import RedisCache as VerifierCache

    url, prefix = redis_server.url, f"pool-{uuid.uuid4().hex[:6]}:"
    errors: list[int] = []
    raw = redis_server.client()
    item = RateLimitItemPerSecond(1000, multiples=60, namespace="omniopd")
    result = SampleResult((Chunk("x", "stop", 1),), 1, 1)
    vector = np.ones((1, 4), dtype=np.float32)

    if user == "gateway cache":
        cache = GatewayCache(url, prefix=prefix, ttl_s=60, on_error=lambda: errors.append(1))

        async def op(i: int) -> None:
            await cache.set(f"k{i}", result)
            assert await cache.get(f"k{i}") == result

        close = cache.aclose
    elif user == "rate limits":
        store = RateStore(url, prefix)

        async def op(i: int) -> None:
            assert await store.hit(item, "teacher", 1)

        async def close() -> None:
            return None
    elif user == "slots":
        slots = RedisSlots(url, f"{prefix}slots", capacity=4 * POOL, lease_s=60)
        together = asyncio.Barrier(POOL)
        leases: list[int] = []  # leases Redis held while every operation held one

        async def op(i: int) -> None:
            token = await slots.acquire(5.0)
            assert token is not None
            await together.wait()
            if i == 0:
                leases.append(raw.zcard(f"{prefix}slots"))
            await together.wait()
            await slots.release(token)

        close = slots.aclose
    else:
        vcache = VerifierCache(url, prefix, on_error=lambda: errors.append(1))

        async def op(i: int) -> None:
            await vcache.put_many("m", [f"t{i}"], vector)
            got = await vcache.get_many("m", [f"t{i}"])
            assert got[0] is not None

        close = vcache.close

    try:
        await asyncio.gather(*(op(i) for i in range(POOL)))
        redis_server.kill()
        await asyncio.to_thread(redis_server.start)
        await asyncio.gather(*(op(i) for i in range(POOL)))
        assert errors == []
        # Everything done after the restart reached the new Redis, not a local fallback.
        if user == "rate limits":
            fresh = RateStore(url, prefix)  # new connections: reads what Redis holds
            _, remaining = await fresh.window(item, "teacher")
            assert remaining == item.amount - POOL
        elif user == "slots":
            assert leases == [POOL, POOL]  # before the kill and after the restart
            assert raw.zcard(f"{prefix}slots") == 0  # and released in Redis
        else:
            assert len(list(raw.scan_iter(match=f"{prefix}*"))) == POOL
    finally:
        await close()
        raw.close()
