"""Provider faults under load: every request answered once, recovered or failed alone, precisely.

A real gateway (``tests/gateway/gwtools.serving``, 127.0.0.1, port 0) fronts one hosted-API
provider: ``anthropic`` (Messages, through the ``anthropic`` SDK), ``openai`` (Chat Completions)
or ``openai_completions``, in the official SDK's wire format, against a LOCAL STAND-IN of that
API (``tests/gateway/standins``; not Anthropic's or OpenAI's service). The stand-in applies a
fault plan per request id (``tests/reliability/faults.py``): 429 with ``retry-after`` (or
``retry-after-ms``), bursts of 5xx, answers slower than the teacher's timeout, connections
dropped after the headers, and 200 answers whose body is not JSON.

Many requests go over ONE ``StreamChunks`` stream (a window of them in flight, as a trainer
sends forks) while others go over ``SampleChunks`` at the same time. About half meet faults;
of those, most meet fewer than the teacher's retries allow and must succeed, the rest meet a
fault on every attempt and must fail alone with the status of their last fault
(``RESOURCE_EXHAUSTED`` with the backend's retry delay, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``),
never ``UNKNOWN`` or ``INTERNAL``. The counts come from request ids: each one must come back
exactly once, and the stand-in counts the backend calls and faults each id met. A last healthy
request on the same stream, sent after every other reply arrived, shows the stream stayed open.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from omniopd.gateway.client import CODE_BY_NUMBER, retry_info_s
from omniopd.gateway.retry import Backoff
from omniopd.proto.v1 import gateway_pb2 as pb
from tests.gateway.gwtools import anthropic_teacher, retry_after_of, serving, toy_teacher_dir
from tests.gateway.standins import anthropic_api, openai_api
from tests.gateway.standins.server import Fault, ServerThread, StandIn

from .faults import FaultPlan, install, request_id

KEY_ENV = "STANDIN_FAULTS_API_KEY"
KEY = "sk-standin-faults-7d02e1"
MAX_RETRIES = 3
TIMEOUT_S = 2.0  # per attempt; generous, so a loaded machine does not time out healthy calls
SLOW_S = TIMEOUT_S + 1.0  # an injected "timeout": the stand-in answers after the gateway gave up
BACKOFF = Backoff(base_s=0.02, cap_s=0.25)  # short pauses; retry-after is honoured as sent
KINDS = ("rate_limited", "server_error", "timeout", "dropped", "not_json")
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@dataclass
class Backend:
    provider: str
    teacher: str
    server: ServerThread
    state: StandIn
    config: dict


def start_standin(provider: str) -> tuple[ServerThread, StandIn]:
    # Keep-alive longer than any pause here, so no request races a connection the server closes.
    if provider == "anthropic":
        state = StandIn(api_key=KEY)
        return ServerThread(anthropic_api.build_app(state), timeout_keep_alive=30).start(), state
    return openai_api.start(KEY, timeout_keep_alive=30)


def teacher_entry(provider: str, url: str) -> dict:
    common = {"max_retries": MAX_RETRIES, "timeout_s": TIMEOUT_S, "max_tokens": 64}
    if provider == "anthropic":
        return anthropic_teacher(url, KEY_ENV, name="claude", **common)
    if provider == "openai":
        return {
            "name": "gpt",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": f"{url}/v1",
            "api_key_env": KEY_ENV,
            **common,
        }
    return {
        "name": "raw",
        "provider": "openai_completions",
        "model": "toy-teacher",
        "tokenizer": str(toy_teacher_dir()),
        "base_url": f"{url}/v1",
        "api_key_env": KEY_ENV,
        **common,
    }


@pytest.fixture(params=["anthropic", "openai", "openai_completions"])
def backend(request, monkeypatch):
    provider = request.param
    monkeypatch.setenv(KEY_ENV, KEY)
    server, state = start_standin(provider)
    entry = teacher_entry(provider, server.url)
    yield Backend(provider, entry["name"], server, state, {"teachers": [entry]})
    server.stop()


# -- the plan -------------------------------------------------------------------------------------


def fault_of(kind: str, provider: str, rng: random.Random) -> Fault:
    if kind == "rate_limited":
        seconds = rng.choice((0.05, 0.1, 0.2))
        if provider != "anthropic" and rng.random() < 0.5:  # OpenAI also sends retry-after-ms
            return Fault(status=429, retry_after_ms=seconds * 1000)
        return Fault(status=429, retry_after=seconds)
    if kind == "server_error":
        statuses = (500, 502, 503, 529) if provider == "anthropic" else (500, 502, 503)
        return Fault(status=rng.choice(statuses))
    if kind == "timeout":
        return Fault(delay=SLOW_S)
    if kind == "dropped":
        return Fault(drop=True)
    return Fault(garbage=True)


def kind_of(fault: Fault) -> str:
    if fault.status == 429:
        return "rate_limited"
    if fault.status is not None:
        return "server_error"
    if fault.delay:
        return "timeout"
    return "dropped" if fault.drop else "not_json"


def draw_plan(lead: str, exhausted: bool, provider: str, rng: random.Random) -> list[Fault]:
    """Faults for one request: a fault on every attempt when ``exhausted``, else 1 to
    ``MAX_RETRIES`` of them. The last is of kind ``lead`` (it decides a failure's status); a
    5xx lead makes a burst of 5xx; the others are drawn from every kind but timeouts, so a plan
    holds at most one timeout."""
    count = MAX_RETRIES + 1 if exhausted else rng.randint(1, MAX_RETRIES)
    if lead == "server_error":
        kinds = [lead] * count
    else:
        others = [k for k in KINDS if k != "timeout"]
        kinds = [rng.choice(others) for _ in range(count - 1)] + [lead]
    return [fault_of(k, provider, rng) for k in kinds]


def expected_status(fault: Fault) -> grpc.StatusCode:
    """What the gateway must answer when ``fault`` was a request's last attempt."""
    kind = kind_of(fault)
    if kind == "rate_limited":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if kind == "timeout":
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.UNAVAILABLE  # 5xx, a dropped connection, a body that is not JSON


def retry_after_of_fault(fault: Fault) -> float | None:
    if fault.retry_after_ms is not None:
        return fault.retry_after_ms / 1000
    return fault.retry_after


# -- sending --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    retry_after: float | None = None


@dataclass
class Book:
    """What came back, by request id, however often."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # ids nobody sent

    def add(self, rid: str, outcome: Outcome, sent: set[str]) -> None:
        if rid not in sent:
            self.unknown.append(rid)
        self.outcomes.setdefault(rid, []).append(outcome)


def stream_outcome(reply: pb.SampleReply) -> Outcome:
    if reply.HasField("error"):
        code = CODE_BY_NUMBER.get(reply.error.code, grpc.StatusCode.UNKNOWN)
        return Outcome(False, code, reply.error.message, retry_info_s(reply.error))
    return Outcome(bool(reply.chunks) and bool(reply.chunks[0].text))


async def run_stream(
    stub, requests: list[pb.SampleRequest], final: pb.SampleRequest, window: int, book: Book
) -> grpc.StatusCode:
    """Send ``requests`` on one stream, at most ``window`` unanswered; once every one has a
    reply, send ``final`` on the same stream. Returns the stream's own final status."""
    sent = {r.request_id for r in requests} | {final.request_id}
    room = asyncio.Semaphore(window)
    all_answered = asyncio.Event()
    answered: set[str] = set()

    async def source():
        for r in requests:
            await room.acquire()
            yield r
        await all_answered.wait()
        yield final

    call = stub.StreamChunks(source())
    async for reply in call:
        book.add(reply.request_id, stream_outcome(reply), sent)
        if reply.request_id != final.request_id:
            room.release()
            answered.add(reply.request_id)
            if len(answered) >= len(requests):
                all_answered.set()
    return await call.code()


async def run_unary(stub, requests: list[pb.SampleRequest], concurrency: int, book: Book) -> None:
    sent = {r.request_id for r in requests}
    gate = asyncio.Semaphore(concurrency)

    async def one(r: pb.SampleRequest) -> None:
        async with gate:
            try:
                reply = await stub.SampleChunks(r, timeout=120)
            except grpc.aio.AioRpcError as err:
                outcome = Outcome(False, err.code(), err.details() or "", retry_after_of(err))
            else:
                outcome = Outcome(bool(reply.chunks) and bool(reply.chunks[0].text))
            book.add(r.request_id, outcome, sent)

    await asyncio.gather(*(one(r) for r in requests))


def sample_request(teacher: str, rid: str) -> pb.SampleRequest:
    return pb.SampleRequest(
        request_id=rid,
        teacher=teacher,
        messages=[pb.Message(role="user", content=f"{rid}: what is {len(rid)} + 17?")],
        n=1,
        max_tokens=16,
        temperature=1.0,
    )


# -- the test -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_faults_are_recovered_or_fail_alone_and_no_reply_is_lost(backend, scale, ledger):
    n_stream, n_unary, window = (1500, 150, 64) if scale.full else (150, 24, 32)
    tag = {"anthropic": "an", "openai": "oc", "openai_completions": "co"}[backend.provider]
    rng = random.Random(f"provider-faults-{backend.provider}-{scale.full}")
    plan: FaultPlan = install(backend.state)

    stream_reqs = [sample_request(backend.teacher, request_id(tag, i)) for i in range(n_stream)]
    unary_reqs = [sample_request(backend.teacher, request_id(tag + "u", i)) for i in range(n_unary)]
    final = sample_request(backend.teacher, request_id(tag + "final", 0))
    # About half the requests meet no fault; 3 in 8 recover; 1 in 8 meets a fault on every
    # attempt. Lead kinds are dealt in turn within each group, so every kind is in both.
    dealt = Counter()
    for r in stream_reqs + unary_reqs:
        roll = rng.random()
        if roll < 0.5:
            plan.plan(r.request_id, [])
            continue
        group = roll >= 0.875
        lead = KINDS[dealt[group] % len(KINDS)]
        dealt[group] += 1
        plan.plan(r.request_id, draw_plan(lead, group, backend.provider, rng))
    plan.plan(final.request_id, [])
    exhausted = {rid for rid, f in plan.planned.items() if len(f) > MAX_RETRIES}
    faulty = {rid for rid, f in plan.planned.items() if f}

    stream_book, unary_book = Book(), Book()
    started = time.monotonic()
    async with serving(backend.config, backoff=BACKOFF) as gw:
        async with asyncio.timeout(600 if scale.full else 240):
            stream_code, _ = await asyncio.gather(
                run_stream(gw.stub, stream_reqs, final, window, stream_book),
                run_unary(gw.stub, unary_reqs, 8, unary_book),
            )
        elapsed = time.monotonic() - started
        codes_counted = {
            code.name: gw.metric(
                "omniopd_gateway_requests_total", teacher=backend.teacher, code=code.name
            )
            for code in grpc.StatusCode
        }
        backend_calls = gw.backend_calls(backend.teacher)
        retries = sum(
            gw.metric("omniopd_gateway_retries_total", teacher=backend.teacher, kind=kind)
            for kind in ("rate_limited", "unavailable", "timeout")
        )

    # Every request id back exactly once; nothing nobody sent.
    lost = 0
    outcome: dict[str, Outcome] = {}
    for book, reqs in ((stream_book, [*stream_reqs, final]), (unary_book, unary_reqs)):
        for r in reqs:
            got = book.outcomes.get(r.request_id, [])
            lost += abs(len(got) - 1)  # missing (0) or duplicated (2+)
            if got:
                outcome[r.request_id] = got[0]
        lost += len(book.unknown)
    assert lost == 0, f"{lost} replies lost or duplicated (unknown ids: {stream_book.unknown[:5]})"
    assert stream_code == grpc.StatusCode.OK  # the stream ended as the client closed it

    # The stream stayed open: its last request, sent after every other reply, was served.
    assert outcome[final.request_id].ok

    # Each request: succeeded (recovered if it met a fault), or failed alone, precisely.
    recovered = failed_alone = 0
    wrong = []
    for rid, faults in plan.planned.items():
        got = outcome[rid]
        if rid not in exhausted:
            if not got.ok:
                wrong.append(f"{rid}: {got.code.name} {got.details!r}, planned {faults}")
            elif faults:
                recovered += 1
            continue
        want = expected_status(faults[-1])
        if got.ok or got.code != want or f"after {MAX_RETRIES + 1} attempts" not in got.details:
            wrong.append(f"{rid}: {got.code.name} {got.details!r}, expected {want.name}")
            continue
        if want == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the backend's delay reaches the client
            assert got.retry_after == pytest.approx(retry_after_of_fault(faults[-1]), abs=1e-3)
        failed_alone += 1
    assert not wrong, f"{len(wrong)} requests ended wrongly, e.g. {wrong[:3]}"
    assert recovered == len(faulty - exhausted) and failed_alone == len(exhausted)
    seen = {o.code for o in outcome.values()}
    assert not seen & set(NEVER)
    assert codes_counted["UNKNOWN"] == codes_counted["INTERNAL"] == 0

    # The stand-in saw each request exactly as planned: no retry too many, none too few.
    extra = {
        rid: (plan.attempts[rid], len(f))
        for rid, f in plan.planned.items()
        if plan.attempts[rid] != (len(f) if rid in exhausted else len(f) + 1)
    }
    assert not extra, f"backend calls per request off plan (got, faults): {list(extra.items())[:5]}"
    faults_injected = plan.total_injected
    assert faults_injected == sum(len(f) for f in plan.planned.values())
    assert plan.unplanned == 0
    # The gateway's metrics agree with the stand-in's count.
    assert backend_calls == plan.total_calls
    assert retries == faults_injected - len(exhausted)  # the last fault of a failure is no retry

    # Coverage: each kind of fault was both recovered from and failed with.
    recovered_kinds = {kind_of(f) for rid in faulty - exhausted for f in plan.planned[rid]}
    failed_kinds = {kind_of(plan.planned[rid][-1]) for rid in exhausted}
    assert recovered_kinds == failed_kinds == set(KINDS)

    requests = len(plan.planned)
    ledger.add(
        "provider faults",
        requests=requests,
        faults_injected=faults_injected,
        recovered=recovered,
        failed_alone=failed_alone,
        lost=lost,
        notes={
            "provider": backend.provider,
            "stream_requests": n_stream + 1,
            "unary_requests": n_unary,
            "backend_calls": plan.total_calls,
            "faulted_call_share": round(faults_injected / plan.total_calls, 3),
            "faults_by_kind": dict(
                sorted(Counter(kind_of(f) for fs in plan.planned.values() for f in fs).items())
            ),
            "failed_by_status": dict(
                sorted(Counter(outcome[rid].code.name for rid in exhausted).items())
            ),
            "seconds": round(elapsed, 1),
        },
    )
