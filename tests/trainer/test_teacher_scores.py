"""Steps 4 and 5 against the real gateway and verifier processes."""

from __future__ import annotations

import asyncio

import grpc

from omniopd.gateway.client import AsyncGatewayClient
from omniopd.proto.v1 import gateway_pb2_grpc
from omniopd.retry import RetryPolicy
from omniopd.trainer.retry import Counters
from omniopd.trainer.scores import ScoreSettings, score_as_replies_arrive
from omniopd.trainer.teacher import (
    CharsPerToken,
    TeacherReply,
    TeacherRequest,
    request_seed,
    stream_teacher,
    teacher_max_tokens,
)
from omniopd.verifier.client import AsyncVerifierClient

SETTINGS = ScoreSettings(metric="lexical", prior="student", alpha=2.0, reward="prob")
FAST = RetryPolicy(max_retries=2, backoff_s=0.01)


def test_teacher_max_tokens_covers_a_draft():
    # 16 student tokens of 2 chars = 32 chars; a teacher at 4 chars/token needs 8 tokens.
    assert teacher_max_tokens(16, 2.0, 4.0, limit=512) == 8
    assert teacher_max_tokens(16, 2.0, 0.5, limit=20) == 20
    assert teacher_max_tokens(1, 0.1, 4.0, limit=512) == 1


def test_chars_per_token_moves_from_the_prior_to_the_data():
    est = CharsPerToken(4.0, weight=16)
    assert est.value == 4.0
    est.update(chars=1000, tokens=1000)
    assert 1.0 < est.value < 1.1


def requests(n: int, m: int = 3) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            fork=i, prompt=f"Q: {10 + i}+11*2=?", partial_answer="11*2=", n=m, max_tokens=6
        )
        for i in range(n)
    ]


async def collect(gateway: str, teacher: str, reqs, counters: Counters):
    async with AsyncGatewayClient(gateway, policy=FAST, timeout_s=60) as client:
        return [
            r
            async for r in stream_teacher(
                client, reqs, teacher=teacher, temperature=1.0, counters=counters
            )
        ]


def test_all_forks_on_one_stream(gateway):
    counters = Counters()
    replies = asyncio.run(collect(gateway, "toy", requests(6), counters))
    assert sorted(r.fork for r in replies) == list(range(6))
    for r in replies:
        assert r.ok and len(r.chunks) == 3 and r.output_tokens > 0
    assert counters.teacher_retries == 0


def test_failed_requests_are_retried_then_reported_not_emptied(gateway):
    counters = Counters()
    replies = asyncio.run(collect(gateway, "dead", requests(2), counters))
    assert sorted(r.fork for r in replies) == [0, 1]
    assert all(not r.ok and r.chunks == [] for r in replies), replies
    assert all(r.error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")) for r in replies)
    assert counters.teacher_retries == 2 * FAST.max_retries
    assert counters.teacher_errors == [r.error for r in replies]


def test_unreachable_gateway_mid_run_fails_every_fork_after_retries():
    counters = Counters()
    replies = asyncio.run(collect("127.0.0.1:1", "toy", requests(3), counters))
    assert len(replies) == 3 and all(not r.ok for r in replies)
    assert counters.teacher_retries == FAST.max_retries  # the stream is retried as a whole


class EndsAtOnce(gateway_pb2_grpc.TeacherGatewayServicer):
    """A gateway that ends every stream with UNAVAILABLE before reading it, as one that is
    going away does."""

    async def StreamChunks(self, request_iterator, context):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


def test_a_stream_ended_while_requests_are_still_being_written_is_retried_then_reported():
    """Writing to a call the gateway has already ended raises ``asyncio.InvalidStateError`` in
    grpc.aio, not an RPC error: it must count as a broken stream (retried, then every fork
    reported as failed), not crash the step (found by a gateway kill under load)."""

    async def run() -> tuple[list[TeacherReply], Counters]:
        server = grpc.aio.server()
        gateway_pb2_grpc.add_TeacherGatewayServicer_to_server(EndsAtOnce(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            counters = Counters()
            replies = await collect(f"127.0.0.1:{port}", "toy", requests(2000), counters)
            return replies, counters
        finally:
            await server.stop(None)

    replies, counters = asyncio.run(run())
    assert sorted(r.fork for r in replies) == list(range(2000))
    assert all(not r.ok and r.chunks == [] for r in replies)
    assert counters.teacher_retries == FAST.max_retries  # the stream is retried as a whole


def test_request_seed_depends_on_run_seed_step_fork_and_rank_only():
    seed = request_seed(7, step=3, fork=1)
    assert seed == request_seed(7, 3, 1, rank=0) and 0 <= seed < 2**31
    others = {request_seed(8, 3, 1), request_seed(7, 4, 1), request_seed(7, 3, 2)}
    others.add(request_seed(7, 3, 1, rank=1))
    assert len(others) == 4 and seed not in others
    req = requests(1)[0]
    assert not req.to_proto(teacher="toy", temperature=1.0).HasField("seed")
    seeded = TeacherRequest(**{**vars(req), "seed": seed})
    assert seeded.to_proto(teacher="toy", temperature=1.0).seed == seed


def test_a_seeded_request_gets_the_same_samples_fresh_as_cached(gateway):
    """The hf teacher honours the trainer's seed: the same fork asked again with its seed gets
    the same samples whether the gateway's cache answers or the model samples afresh
    (``cache: false``); another seed gets others."""

    def sample(seed: int, cache: bool) -> tuple[list[str], bool]:
        req = TeacherRequest(
            fork=0, prompt="Q: 12+3*4=?", partial_answer="3*4=", n=3, max_tokens=8, seed=seed
        )
        proto = req.to_proto(teacher="toy", temperature=1.0)
        proto.cache = cache
        with grpc.insecure_channel(gateway) as channel:
            reply = gateway_pb2_grpc.TeacherGatewayStub(channel).SampleChunks(proto, timeout=60)
        return [c.text for c in reply.chunks], reply.cached

    seed = request_seed(7, step=1, fork=0)
    first, _ = sample(seed, cache=True)
    again, cached = sample(seed, cache=True)
    fresh, fresh_cached = sample(seed, cache=False)
    assert cached and not fresh_cached
    assert first == again == fresh and len(first) == 3
    assert sample(request_seed(7, step=2, fork=0), cache=False)[0] != first


async def replies_in_waves(waves: list[list[TeacherReply]], pause_s: float):
    for wave in waves:
        for reply in wave:
            yield reply
        await asyncio.sleep(pause_s)


def reply(fork: int, ok: bool = True) -> TeacherReply:
    if not ok:
        return TeacherReply(fork, [], 0, False, error="UNAVAILABLE: gone")
    return TeacherReply(fork, ["11*2=22.", "22 then", "11*2=22"], 9, False)


DRAFTS = {i: ["22. 10+22", "11*2=22", "the cat"] for i in range(8)}


async def score(verifier_url: str, waves, counters: Counters, pause_s: float = 0.2):
    async with AsyncVerifierClient(verifier_url, max_retries=0) as client:
        return await score_as_replies_arrive(
            replies_in_waves(waves, pause_s),
            DRAFTS,
            client,
            SETTINGS,
            policy=FAST,
            counters=counters,
        )


def test_scores_arrive_in_batches_and_failures_stay_out(verifier):
    counters = Counters()
    waves = [[reply(0), reply(1), reply(2, ok=False)], [reply(3), reply(4), reply(5)]]
    out = asyncio.run(score(verifier, waves, counters))
    assert sorted(out.rewards) == [0, 1, 3, 4, 5]
    assert out.failed == {2: "teacher: UNAVAILABLE: gone"}
    assert all(len(r) == 3 and all(0 < x < 1 for x in r) for r in out.rewards.values())
    # Groups that arrive together travel together: at most one call per wave here.
    assert 1 <= counters.verifier_calls <= 2
    assert out.teacher_tokens == 5 * 9
    # The draft closest to the teacher's chunks earns the highest reward.
    assert max(range(3), key=lambda k: out.rewards[0][k]) == 1


def test_unreachable_verifier_fails_its_forks_after_counted_retries():
    counters = Counters()
    out = asyncio.run(score("http://127.0.0.1:1", [[reply(0), reply(1)]], counters, pause_s=0))
    assert out.rewards == {} and set(out.failed) == {0, 1}
    assert all(v.startswith("verifier: ") for v in out.failed.values())
    assert counters.verifier_retries == FAST.max_retries * counters.verifier_calls


def test_a_rejected_batch_fails_only_its_forks(verifier):
    """A 4xx (here 413: a draft over the verifier's text limit) is not retried; the forks of
    that call fail, the next call still scores."""
    counters = Counters()
    drafts = dict(DRAFTS)
    drafts[0] = ["x" * 5000, "y", "z"]
    waves = [[reply(0)], [reply(1)]]

    async def run():
        async with AsyncVerifierClient(verifier, max_retries=0) as client:
            return await score_as_replies_arrive(
                replies_in_waves(waves, 0.3),
                drafts,
                client,
                SETTINGS,
                policy=FAST,
                counters=counters,
            )

    out = asyncio.run(run())
    assert 1 in out.rewards and 0 not in out.rewards
    assert "413" in out.failed[0] and counters.verifier_retries == 0
