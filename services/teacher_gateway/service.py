"""The gRPC face of the gateway: ``omniopd.v1.TeacherGateway`` over :class:`Gateway`.

Translation only: wire request -> :func:`validate` -> :meth:`Gateway.sample` -> wire reply, and
:class:`GatewayError` -> gRPC status (with ``google.rpc.RetryInfo`` where waiting helps). No
failure of one request ends a stream or reaches a client as ``UNKNOWN``: not even bytes that do
not parse as the request message (:func:`add_to_server` hands them on as :class:`Malformed`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError, Message

from omniopd.gateway.config import CHAT_PROVIDERS
from omniopd.gateway.core import Gateway, Sampled
from omniopd.gateway.errors import GatewayError
from omniopd.gateway.validation import ValidRequest, validate
from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TeacherGateway"].full_name
# Requests of one stream being worked on or waiting to be sent; past it, the stream stops reading
# (and HTTP/2 flow control pushes back on the client) until a reply is out.
MAX_STREAM_IN_FLIGHT = 1024
# The metrics label of requests naming no configured teacher (names from clients are unbounded).
UNKNOWN_TEACHER = "_unknown"


class Malformed:
    """Request bytes that did not parse as the RPC's message; answered ``INVALID_ARGUMENT``.

    gRPC would end the call (a whole stream, with the replies still owed on it) as ``UNKNOWN``
    if deserialising raised, so the deserialiser returns this instead and the handler refuses it
    like any other bad request.
    """

    request_id = ""
    teacher = ""

    def __init__(self, message_type: str, error: DecodeError) -> None:
        # DecodeError says "Error parsing message with type '...': <what>"; keep the what.
        why = str(error).rpartition(": ")[2] or "cannot be parsed"
        self.message = f"request: not a valid {message_type} message ({why})"


def _parse(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return Malformed(name, err)

    return parse


def _reply(request_id: str, teacher: str, sampled: Sampled) -> pb.SampleReply:
    result = sampled.result
    return pb.SampleReply(
        request_id=request_id,
        teacher=teacher,
        chunks=[
            pb.Chunk(text=c.text, finish_reason=c.finish_reason, output_tokens=c.output_tokens)
            for c in result.chunks
        ],
        cached=sampled.cached,
        usage=pb.Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens),
        continuation=result.continuation,
    )


class TeacherGatewayService(pb_grpc.TeacherGatewayServicer):
    def __init__(self, gateway: Gateway, *, token: str | None = None) -> None:
        self.gateway = gateway
        self._expected = f"Bearer {token}".encode() if token else None

    # -- auth ---------------------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self._expected is None:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return
                break
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "authorization: missing or wrong bearer token (metadata 'authorization: Bearer ...')",
        )

    # -- one request --------------------------------------------------------------------------

    def _deadline(self, request: ValidRequest, time_remaining: float | None) -> float:
        budget = self.gateway.default_budget_s(request.teacher.name)
        if time_remaining is not None:
            budget = min(budget, time_remaining)
        return time.monotonic() + budget

    async def _sample(
        self, request: pb.SampleRequest | Malformed, time_remaining: float | None
    ) -> pb.SampleReply:
        """The reply to ``request``, or :class:`GatewayError` (every failure becomes one)."""
        teacher = request.teacher if request.teacher in self.gateway.teachers else UNKNOWN_TEACHER
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Malformed):
                raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            valid = validate(request, self.gateway.config, self.gateway.teacher_configs)
            deadline = self._deadline(valid, time_remaining)
            sampled = await self.gateway.sample(valid, deadline)
            return _reply(valid.request_id, valid.teacher.name, sampled)
        except GatewayError as err:
            code = err.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("teacher %r: request %r failed", teacher, request.request_id)
            raise GatewayError(code, "internal error in the gateway (logged)") from None
        finally:
            self.gateway.metrics.count_request(teacher, code.name)

    # -- RPCs ---------------------------------------------------------------------------------

    async def SampleChunks(
        self, request: pb.SampleRequest, context: grpc.aio.ServicerContext
    ) -> pb.SampleReply:
        await self._authorize(context)
        try:
            return await self._sample(request, context.time_remaining())
        except GatewayError as err:
            await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())
            raise AssertionError("unreachable: abort raises") from None

    async def StreamChunks(
        self, request_iterator: AsyncIterator[pb.SampleRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SampleReply]:
        await self._authorize(context)
        replies: asyncio.Queue[pb.SampleReply | None] = asyncio.Queue()
        room = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: pb.SampleRequest) -> None:
            try:
                reply = await self._sample(request, context.time_remaining())
            except GatewayError as err:
                reply = pb.SampleReply(
                    request_id=request.request_id,
                    teacher=request.teacher,
                    error=err.to_status_proto(),
                )
            except asyncio.CancelledError:
                room.release()
                raise
            replies.put_nowait(reply)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await room.acquire()
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                replies.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
                room.release()  # counted until sent, so a client that stops reading stalls us
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def ListTeachers(
        self, request: pb.ListTeachersRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.ListTeachersReply:
        await self._authorize(context)
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        out = []
        for t in self.gateway.teachers.values():
            c = t.config
            lim = c.limits
            out.append(
                pb.TeacherInfo(
                    name=c.name,
                    provider=c.provider,
                    model=c.model,
                    supports_continuation=t.provider.supports_continuation,
                    continuation=c.continuation if c.provider in CHAT_PROVIDERS else "",
                    max_n=c.max_n,
                    max_tokens=c.max_tokens,
                    limits=pb.TeacherLimits(
                        requests_per_minute=lim.requests_per_minute or 0,
                        input_tokens_per_minute=lim.input_tokens_per_minute or 0,
                        output_tokens_per_minute=lim.output_tokens_per_minute or 0,
                        max_concurrency=lim.max_concurrency or 0,
                        max_queue_wait_s=lim.max_queue_wait_s,
                    ),
                )
            )
        return pb.ListTeachersReply(teachers=out)


def add_to_server(service: TeacherGatewayService, server: grpc.aio.Server) -> None:
    """Register ``service`` as the generated ``add_TeacherGatewayServicer_to_server`` does, with
    deserialisers that turn unparseable bytes into :class:`Malformed` instead of raising."""
    handlers = {
        "SampleChunks": grpc.unary_unary_rpc_method_handler(
            service.SampleChunks,
            request_deserializer=_parse(pb.SampleRequest),
            response_serializer=pb.SampleReply.SerializeToString,
        ),
        "StreamChunks": grpc.stream_stream_rpc_method_handler(
            service.StreamChunks,
            request_deserializer=_parse(pb.SampleRequest),
            response_serializer=pb.SampleReply.SerializeToString,
        ),
        "ListTeachers": grpc.unary_unary_rpc_method_handler(
            service.ListTeachers,
            request_deserializer=_parse(pb.ListTeachersRequest),
            response_serializer=pb.ListTeachersReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
