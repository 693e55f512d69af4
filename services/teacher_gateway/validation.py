"""Request validation: a wire ``SampleRequest`` becomes :class:`SampleParams` or a precise error.

Runs before the cache, the limits and any backend call, so a bad request costs nothing. Every
error is ``INVALID_ARGUMENT`` (``NOT_FOUND`` for an unknown teacher) and names the field and the
limit it broke, e.g. ``n: 40 is above teacher 'haiku' max_n of 16``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from omniopd.gateway.config import GatewayConfig, TeacherConfig
from omniopd.gateway.errors import GatewayError
from omniopd.gateway.providers.anthropic import MAX_TEMPERATURE as ANTHROPIC_MAX_TEMPERATURE
from omniopd.gateway.providers.base import Message, SampleParams
from omniopd.proto.v1 import gateway_pb2 as pb

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 256
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


@dataclass(frozen=True, slots=True)
class ValidRequest:
    request_id: str
    teacher: TeacherConfig
    params: SampleParams
    use_cache: bool


def _invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def find_teacher(name: str, teachers: Mapping[str, TeacherConfig]) -> TeacherConfig:
    if not name:
        raise _invalid(f"teacher: required; known teachers: {', '.join(sorted(teachers))}")
    teacher = teachers.get(name)
    if teacher is None:
        raise GatewayError(
            grpc.StatusCode.NOT_FOUND,
            f"teacher: {name[:100]!r} is not configured; known teachers: "
            f"{', '.join(sorted(teachers))}",
        )
    return teacher


def _messages(request: pb.SampleRequest, config: GatewayConfig) -> tuple[Message, ...]:
    count = len(request.messages)
    if count == 0:
        raise _invalid("messages: required, at least one message (the user's turn)")
    if count > config.max_messages:
        raise _invalid(f"messages: {count} messages, above the limit of {config.max_messages}")
    out = []
    seen_other = False
    for i, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise _invalid(f"messages[{i}].role: {m.role[:40]!r} is not one of {', '.join(ROLES)}")
        if m.role == "system" and seen_other:
            raise _invalid(f"messages[{i}].role: 'system' is allowed only before other messages")
        seen_other = seen_other or m.role != "system"
        if not m.content:
            raise _invalid(f"messages[{i}].content: empty")
        out.append(Message(m.role, m.content))
    if out[-1].role != "user":
        raise _invalid(
            f"messages[{count - 1}].role: the last message must be 'user' (the answer so far "
            f"goes in partial_answer), got {out[-1].role!r}"
        )
    return tuple(out)


def _stop(request: pb.SampleRequest) -> tuple[str, ...]:
    if len(request.stop) > MAX_STOP_STRINGS:
        raise _invalid(f"stop: {len(request.stop)} strings, above the limit of {MAX_STOP_STRINGS}")
    for i, s in enumerate(request.stop):
        if not s:
            raise _invalid(f"stop[{i}]: empty string")
        if len(s) > MAX_STOP_CHARS:
            raise _invalid(f"stop[{i}]: {len(s)} characters, above the limit of {MAX_STOP_CHARS}")
    return tuple(request.stop)


def validate(
    request: pb.SampleRequest, config: GatewayConfig, teachers: Mapping[str, TeacherConfig]
) -> ValidRequest:
    """Check ``request`` against the gateway's and its teacher's limits."""
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise _invalid(
            f"request_id: {len(request.request_id)} characters, above the limit of "
            f"{MAX_REQUEST_ID_CHARS}"
        )
    teacher = find_teacher(request.teacher, teachers)
    where = f"teacher {teacher.name!r}"
    messages = _messages(request, config)
    stop = _stop(request)

    chars = sum(len(m.content) for m in messages) + len(request.partial_answer)
    if chars > config.max_request_chars:
        raise _invalid(
            f"messages: {chars} characters with partial_answer, above the limit of "
            f"{config.max_request_chars}"
        )
    if not 1 <= request.n <= teacher.max_n:
        raise _invalid(f"n: {request.n} is outside 1..{teacher.max_n} ({where} max_n)")

    max_tokens = request.max_tokens if request.HasField("max_tokens") else teacher.max_tokens
    if not 1 <= max_tokens <= teacher.max_tokens:
        raise _invalid(
            f"max_tokens: {max_tokens} is outside 1..{teacher.max_tokens} ({where} max_tokens)"
        )
    temperature = request.temperature if request.HasField("temperature") else DEFAULT_TEMPERATURE
    # The Messages API takes [0, 1]; refused here, before the limits count it as a backend call.
    highest = ANTHROPIC_MAX_TEMPERATURE if teacher.provider == "anthropic" else 2.0
    if not 0.0 <= temperature <= highest:  # also refuses NaN
        why = f" ({where}: the Anthropic API's maximum)" if highest < 2.0 else ""
        raise _invalid(f"temperature: {temperature} is outside [0, {highest:g}]{why}")
    top_p = request.top_p if request.HasField("top_p") else DEFAULT_TOP_P
    if not 0.0 < top_p <= 1.0:
        raise _invalid(f"top_p: {top_p} is outside (0, 1]")

    params = SampleParams(
        messages=messages,
        partial_answer=request.partial_answer,
        n=request.n,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=request.seed if request.HasField("seed") else None,
    )
    use_cache = request.cache if request.HasField("cache") else True
    return ValidRequest(request.request_id, teacher, params, use_cache)
