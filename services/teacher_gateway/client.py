"""Typed clients of the teacher gateway (sync and async, on grpcio), for any trainer.

Needs grpcio and the generated stubs only: importing this module loads no provider, no model.

    from omniopd.gateway.client import GatewayClient, sample_request

    with GatewayClient("127.0.0.1:50051") as gateway:
        gateway.teachers()                             # name -> TeacherInfo
        replies = gateway.sample({"q1": sample_request("haiku", "2+2=?", n=4)})

    async with AsyncGatewayClient("127.0.0.1:50051") as gateway:
        async for reply in gateway.stream(requests, teacher="haiku", temperature=1.0):
            ...                                        # one TeacherReply per request

Every call follows the project's one retry policy (``omniopd/retry.py``): ``UNAVAILABLE``,
``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED`` and ``ABORTED`` are tried again, after the
gateway's ``google.rpc.RetryInfo`` delay when it sent one (a limit says how long to wait),
else after a jittered backoff; anything else fails at once. ``on_retry`` sees each retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from omniopd.proto.v1 import gateway_pb2, gateway_pb2_grpc
from omniopd.retry import RetryPolicy, grpc_retryable

__all__ = [
    "AsyncGatewayClient",
    "GatewayClient",
    "Retry",
    "TeacherReply",
    "TeacherRequest",
    "bearer",
    "retry_info_s",
    "sample_request",
    "status_from_call",
]

K = TypeVar("K")
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# grpc.StatusCode by its google.rpc.Code number, for turning a stream reply's error back.
CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
DEFAULT_TIMEOUT_S = 120.0

log = logging.getLogger("omniopd.gateway.client")


@dataclass(frozen=True)
class Retry:
    """A retry about to happen: of one ``request`` (its id) or of the whole ``stream``."""

    what: str  # "request" or "stream"
    request_id: str | None
    reason: str  # "CODE: message", or the exception
    attempt: int  # 1 for the first retry of this request or stream
    pause_s: float


OnRetry = Callable[[Retry], None]


def retry_info_s(status: status_pb2.Status) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in a status, in seconds, if the gateway sent one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def status_from_call(error: grpc.RpcError) -> status_pb2.Status | None:
    """The rich status a failed call carried in its trailers, if any."""
    metadata = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def target(address: str) -> str:
    """``host:port`` (a ``grpc://`` prefix is accepted and dropped)."""
    return address.removeprefix("grpc://")


def sample_request(
    teacher: str,
    prompt: str | list[gateway_pb2.Message],
    *,
    n: int,
    partial_answer: str = "",
    max_tokens: int | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    request_id: str = "",
) -> gateway_pb2.SampleRequest:
    """A ``SampleRequest``: a prompt as one user turn (or the messages given)."""
    messages = (
        [gateway_pb2.Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
    )
    proto = gateway_pb2.SampleRequest(
        request_id=request_id,
        teacher=teacher,
        messages=messages,
        partial_answer=partial_answer,
        n=n,
        temperature=temperature,
    )
    if max_tokens is not None:
        proto.max_tokens = max_tokens
    if seed is not None:
        proto.seed = seed
    return proto


@dataclass(frozen=True)
class TeacherRequest:
    """One continuation request of a stream: ``n`` samples after ``partial_answer``."""

    fork: int
    prompt: str
    partial_answer: str
    n: int
    max_tokens: int
    seed: int | None = None  # the teacher's sampling seed; None: none sent

    def to_proto(self, *, teacher: str, temperature: float) -> gateway_pb2.SampleRequest:
        return sample_request(
            teacher,
            self.prompt,
            n=self.n,
            partial_answer=self.partial_answer,
            max_tokens=self.max_tokens,
            temperature=temperature,
            seed=self.seed,
            request_id=str(self.fork),
        )


@dataclass(frozen=True)
class TeacherReply:
    """The teacher's chunks for one request, or why there are none (``error``)."""

    fork: int
    chunks: list[str]
    output_tokens: int
    cached: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _no_retry_hook(retry: Retry) -> None:
    pass


async def stream_chunks(
    stub: gateway_pb2_grpc.TeacherGatewayStub,
    requests: list[TeacherRequest],
    *,
    teacher: str,
    temperature: float,
    metadata: tuple[tuple[str, str], ...],
    idle_timeout_s: float,
    policy: RetryPolicy,
    on_retry: OnRetry = _no_retry_hook,
) -> AsyncIterator[TeacherReply]:
    """Send every request on one ``StreamChunks`` call; yield one reply per request, in
    completion order.

    A request whose reply carries a transient error is re-sent on the same stream after the
    gateway's ``RetryInfo`` delay (else a jittered backoff); a broken stream is reopened for
    the requests still pending. Both are retries (``on_retry``); a request whose retries run
    out is yielded with ``error`` set, never as empty chunks. ``idle_timeout_s`` bounds the
    wait for the *next* reply; exceeding it counts as a broken stream.
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
                try:
                    await call.write(req.to_proto(teacher=teacher, temperature=temperature))
                except asyncio.InvalidStateError:  # grpc.aio: the call has already ended
                    raise ConnectionError("the gateway ended the stream during a write") from None
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.INTERNAL:
                        raise
                    # A write that meets a stream the gateway has just ended fails with
                    # INTERNAL ("Internal error from Core"), not with the gateway's status.
                    raise ConnectionError(
                        f"the stream broke during a write: {err.details()}"
                    ) from None

        def forget(task: asyncio.Task, resends=resends) -> None:
            resends.discard(task)
            if not task.cancelled():
                task.exception()  # a failed resend shows as a broken stream in the read below

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
                rid = reply.request_id
                if reply.HasField("error") and reply.error.code != 0:
                    code = CODE_BY_NUMBER.get(reply.error.code, grpc.StatusCode.UNKNOWN)
                    reason = f"{code.name}: {reply.error.message}"
                    if grpc_retryable(code) and attempts[rid] < policy.max_retries:
                        delay = policy.delay(attempts[rid], retry_info_s(reply.error))
                        attempts[rid] += 1
                        on_retry(Retry("request", rid, reason, attempts[rid], delay))
                        task = asyncio.create_task(send(req, delay))
                        resends.add(task)
                        task.add_done_callback(forget)
                        continue
                    del pending[rid]
                    yield TeacherReply(req.fork, [], 0, False, error=reason)
                    continue
                del pending[rid]
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
            if (code is None or grpc_retryable(code)) and stream_attempt < policy.max_retries:
                delay = policy.delay(stream_attempt)
                stream_attempt += 1
                on_retry(Retry("stream", None, reason, stream_attempt, delay))
                await asyncio.sleep(delay)
                continue
            for rid, req in list(pending.items()):
                del pending[rid]
                yield TeacherReply(req.fork, [], 0, False, error=reason)
        finally:
            for task in resends:
                task.cancel()
            call.cancel()


class _Client:
    """What both clients hold: the address, the retry policy, the per-call timeout, the bearer
    token's metadata and one channel (``_channel`` opens it: grpc's or grpc.aio's)."""

    _channel: Callable[[str], Any]

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.metadata = bearer(token)
        self.channel = type(self)._channel(target(address))
        self.stub = gateway_pb2_grpc.TeacherGatewayStub(self.channel)


class AsyncGatewayClient(_Client):
    """asyncio client: one channel, any number of streams and calls at once."""

    _channel = grpc.aio.insecure_channel

    async def teachers(self, timeout_s: float | None = None) -> dict[str, gateway_pb2.TeacherInfo]:
        """The teachers the gateway serves, by name (one attempt: a start-up check)."""
        listing = await self.stub.ListTeachers(
            gateway_pb2.ListTeachersRequest(),
            metadata=self.metadata,
            timeout=timeout_s or self.timeout_s,
            wait_for_ready=False,
        )
        return {t.name: t for t in listing.teachers}

    def stream(
        self,
        requests: list[TeacherRequest],
        *,
        teacher: str,
        temperature: float,
        on_retry: OnRetry = _no_retry_hook,
    ) -> AsyncIterator[TeacherReply]:
        """:func:`stream_chunks` on this client's channel, policy and timeout."""
        return stream_chunks(
            self.stub,
            requests,
            teacher=teacher,
            temperature=temperature,
            metadata=self.metadata,
            idle_timeout_s=self.timeout_s,
            policy=self.policy,
            on_retry=on_retry,
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GatewayClient(_Client):
    """Blocking client; one channel, safe to share between threads."""

    _channel = grpc.insecure_channel

    def teachers(self, timeout_s: float | None = None) -> dict[str, gateway_pb2.TeacherInfo]:
        """The teachers the gateway serves, by name (one attempt: a start-up check)."""
        listing = self.stub.ListTeachers(
            gateway_pb2.ListTeachersRequest(),
            metadata=self.metadata,
            timeout=timeout_s or self.timeout_s,
        )
        return {t.name: t for t in listing.teachers}

    def sample(
        self,
        requests: Mapping[K, gateway_pb2.SampleRequest],
        *,
        on_retry: OnRetry = _no_retry_hook,
    ) -> dict[K, gateway_pb2.SampleReply | grpc.RpcError]:
        """Every request in flight at once (``SampleChunks``); each key's reply, or the
        ``grpc.RpcError`` it failed with once its retries ran out or were not allowed. A
        round's transient failures are sent again together, after the longest pause any of
        them asked for."""
        pending = dict(requests)
        out: dict[K, gateway_pb2.SampleReply | grpc.RpcError] = {}
        for attempt in range(self.policy.max_retries + 1):
            calls = {
                key: self.stub.SampleChunks.future(
                    request, timeout=self.timeout_s, metadata=self.metadata
                )
                for key, request in pending.items()
            }
            again: dict[K, gateway_pb2.SampleRequest] = {}
            pause = 0.0
            for key, call in calls.items():
                try:
                    out[key] = call.result()
                except grpc.RpcError as err:
                    code = err.code()  # type: ignore[attr-defined]
                    if grpc_retryable(code) and attempt < self.policy.max_retries:
                        status = status_from_call(err)
                        hint = retry_info_s(status) if status is not None else None
                        wait = self.policy.delay(attempt, hint)
                        reason = f"{code.name}: {err.details()}"  # type: ignore[attr-defined]
                        on_retry(
                            Retry("request", pending[key].request_id, reason, attempt + 1, wait)
                        )
                        pause = max(pause, wait)
                        again[key] = pending[key]
                        continue
                    out[key] = err
            if not again:
                break
            time.sleep(pause)
            pending = again
        return out

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
