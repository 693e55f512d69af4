"""Step 4 of docs/method.md: M teacher continuations per fork, all forks of a step on one stream.

Every fork's request goes out at once on one ``StreamChunks`` call; replies come back in
completion order and are yielded as they arrive, so step 5 can score the first forks while the
teacher still writes the last. Text only: the prompt as a user message, the student's response
so far as ``partial_answer``, and a sampling seed per fork (:func:`request_seed`).

A failed request (an ``error`` in its reply) is re-sent on the same stream when its status is
transient; a broken stream is reopened for the requests still pending. Both are retries,
counted; a fork whose retries run out is yielded as failed, never as empty chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from omniopd.proto.v1 import gateway_pb2, gateway_pb2_grpc
from omniopd.trainer.retry import Counters, RetryPolicy

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
CODES = {c.value[0]: c for c in grpc.StatusCode}

log = logging.getLogger("omniopd.trainer")


@dataclass(frozen=True)
class TeacherRequest:
    """One fork's question to the teacher."""

    fork: int
    prompt: str
    partial_answer: str
    n: int
    max_tokens: int
    seed: int | None = None  # the teacher's sampling seed (see request_seed); None: none sent


def request_seed(run_seed: int, step: int, fork: int, rank: int = 0) -> int:
    """The teacher's sampling seed for fork ``fork`` of step ``step`` on rank ``rank``.

    A hash of the four, in [0, 2^31): every run with the same ``seed`` asks the same fork of
    the same step with the same seed, whether the request is fresh, retried, redone after a
    resume or answered from the gateway's cache, so a teacher that honours seeds (``hf``, vLLM)
    returns the same samples; other forks and steps get other seeds, hence other samples.
    """
    key = f"{run_seed}/{step}/{rank}/{fork}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 2**31


@dataclass(frozen=True)
class TeacherReply:
    """The teacher's M chunks for one fork, or why there are none (``error``)."""

    fork: int
    chunks: list[str]
    output_tokens: int
    cached: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def teacher_max_tokens(
    chunk_tokens: int, student_chars_per_token: float, teacher_chars_per_token: float, limit: int
) -> int:
    """Teacher tokens that cover about as much text as a draft of ``chunk_tokens`` student
    tokens: L · (student chars/token) / (teacher chars/token), in [1, limit]."""
    wanted = math.ceil(chunk_tokens * student_chars_per_token / teacher_chars_per_token)
    return max(1, min(limit, wanted))


class CharsPerToken:
    """A running ratio of characters to tokens, starting from a prior worth ``weight`` tokens."""

    def __init__(self, prior: float, weight: int = 16) -> None:
        self.chars = prior * weight
        self.tokens = float(weight)

    def update(self, chars: int, tokens: int) -> None:
        self.chars += chars
        self.tokens += tokens

    @property
    def value(self) -> float:
        return self.chars / self.tokens


def to_proto(
    request: TeacherRequest, *, teacher: str, temperature: float
) -> gateway_pb2.SampleRequest:
    proto = gateway_pb2.SampleRequest(
        request_id=str(request.fork),
        teacher=teacher,
        messages=[gateway_pb2.Message(role="user", content=request.prompt)],
        partial_answer=request.partial_answer,
        n=request.n,
        max_tokens=request.max_tokens,
        temperature=temperature,
    )
    if request.seed is not None:
        proto.seed = request.seed
    return proto


def status_hint(status: status_pb2.Status) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in a status, in seconds, if the gateway sent one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


async def stream_teacher(
    stub: gateway_pb2_grpc.TeacherGatewayStub,
    requests: list[TeacherRequest],
    *,
    teacher: str,
    temperature: float,
    metadata: tuple[tuple[str, str], ...],
    idle_timeout_s: float,
    policy: RetryPolicy,
    counters: Counters,
) -> AsyncIterator[TeacherReply]:
    """Send every request on one stream; yield one reply per fork, in completion order.

    ``idle_timeout_s`` bounds the wait for the *next* reply; exceeding it counts as a broken
    stream (retried like one).
    """
    pending = {str(r.fork): r for r in requests}
    attempts = dict.fromkeys(pending, 0)
    stream_attempt = 0
    while pending:
        call = stub.StreamChunks(metadata=metadata)
        write_lock = asyncio.Lock()
        resends: set[asyncio.Task] = set()

        async def send(req: TeacherRequest, delay: float = 0.0, call=call, lock=write_lock) -> None:
            if delay:
                await asyncio.sleep(delay)
            async with lock:
                await call.write(to_proto(req, teacher=teacher, temperature=temperature))

        try:
            for req in list(pending.values()):
                await send(req)
            while pending:
                reply = await asyncio.wait_for(call.read(), timeout=idle_timeout_s)
                if reply is grpc.aio.EOF:
                    raise ConnectionError("the gateway closed the stream early")
                req = pending.get(reply.request_id)
                if req is None:
                    continue  # a late duplicate of a request already answered
                if reply.HasField("error") and reply.error.code != 0:
                    code = CODES.get(reply.error.code, grpc.StatusCode.UNKNOWN)
                    rid = reply.request_id
                    if code in RETRYABLE and attempts[rid] < policy.max_retries:
                        delay = policy.delay(attempts[rid], status_hint(reply.error))
                        attempts[rid] += 1
                        counters.teacher_retries += 1
                        log.debug(
                            "teacher request for fork %s failed (%s: %s): retry %d of %d in %.2f s",
                            rid,
                            code.name,
                            reply.error.message,
                            attempts[rid],
                            policy.max_retries,
                            delay,
                        )
                        task = asyncio.create_task(send(req, delay))
                        resends.add(task)
                        task.add_done_callback(resends.discard)
                        continue
                    del pending[rid]
                    message = f"{code.name}: {reply.error.message}"
                    counters.teacher_errors.append(message)
                    yield TeacherReply(req.fork, [], 0, False, error=message)
                    continue
                del pending[reply.request_id]
                yield TeacherReply(
                    fork=req.fork,
                    chunks=[c.text for c in reply.chunks],
                    output_tokens=sum(c.output_tokens for c in reply.chunks),
                    cached=reply.cached,
                )
            async with write_lock:
                await call.done_writing()
        except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as err:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            reason = f"{code.name}: {err.details()}" if code else f"{type(err).__name__}: {err}"
            retryable = code is None or code in RETRYABLE
            if retryable and stream_attempt < policy.max_retries:
                counters.teacher_retries += 1
                delay = policy.delay(stream_attempt)
                stream_attempt += 1
                log.warning(
                    "teacher stream failed (%s): reopening it, retry %d of %d in %.2f s",
                    reason,
                    stream_attempt,
                    policy.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            for rid, req in list(pending.items()):
                del pending[rid]
                counters.teacher_errors.append(reason)
                yield TeacherReply(req.fork, [], 0, False, error=reason)
        finally:
            for task in resends:
                task.cancel()
            call.cancel()
