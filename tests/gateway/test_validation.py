"""Bad input: INVALID_ARGUMENT (NOT_FOUND for an unknown teacher) naming the field and the limit,
never UNKNOWN or INTERNAL, never a crash, never a call to the provider.

The gateway under test fronts the anthropic provider and a LOCAL STAND-IN of the Messages API
(``tests/gateway/standins``, not Anthropic's service); its request log proves no call was made.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniopd.proto.v1 import gateway_pb2 as pb

from .gwtools import anthropic_teacher, call_error, gather_replies, request, serving
from .standins import anthropic_api

KEY_ENV = "STANDIN_VALIDATION_API_KEY"
KEY = "sk-ant-standin-validation-5e2a"
MAX_N, MAX_TOKENS, MAX_CHARS, MAX_MESSAGES = 4, 64, 2000, 5


def msg(role: str, content: str = "hi") -> pb.Message:
    return pb.Message(role=role, content=content)


def req(**fields) -> pb.SampleRequest:
    base = {"teacher": "claude", "messages": [msg("user", "What is 2+2?")], "n": 1}
    return pb.SampleRequest(**(base | fields))


BAD = [
    # (request, status, words the message must contain)
    (req(teacher="gpt-9"), "NOT_FOUND", ["teacher", "'gpt-9'", "known teachers: claude"]),
    (req(teacher=""), "INVALID_ARGUMENT", ["teacher: required", "claude"]),
    (req(messages=[]), "INVALID_ARGUMENT", ["messages: required"]),
    (req(messages=[msg("bot")]), "INVALID_ARGUMENT", ["messages[0].role", "'bot'", "user"]),
    (req(messages=[msg("user"), msg("assistant")]), "INVALID_ARGUMENT", ["messages[1].role"]),
    (req(messages=[msg("user"), msg("system"), msg("user")]), "INVALID_ARGUMENT", ["messages[1].role", "system"]),
    (req(messages=[msg("user", "")]), "INVALID_ARGUMENT", ["messages[0].content: empty"]),
    (req(messages=[msg("user")] * 6), "INVALID_ARGUMENT", ["messages: 6 messages", "limit of 5"]),
    (req(messages=[msg("user", "x" * 2001)]), "INVALID_ARGUMENT", ["messages: 2001 characters", "limit of 2000"]),
    (req(partial_answer="y" * 2000), "INVALID_ARGUMENT", ["partial_answer", "limit of 2000"]),
    (req(n=0), "INVALID_ARGUMENT", ["n: 0", "1..4", "max_n"]),
    (req(n=5), "INVALID_ARGUMENT", ["n: 5", "1..4"]),
    (req(max_tokens=65), "INVALID_ARGUMENT", ["max_tokens: 65", "1..64"]),
    (req(max_tokens=0), "INVALID_ARGUMENT", ["max_tokens: 0"]),
    (req(temperature=2.01), "INVALID_ARGUMENT", ["temperature: 2.01", "[0, 1]"]),
    (req(temperature=1.5), "INVALID_ARGUMENT", ["temperature: 1.5", "[0, 1]", "Anthropic API's maximum"]),
    (req(temperature=-0.1), "INVALID_ARGUMENT", ["temperature"]),
    (req(temperature=float("nan")), "INVALID_ARGUMENT", ["temperature: nan"]),
    (req(top_p=0.0), "INVALID_ARGUMENT", ["top_p: 0.0", "(0, 1]"]),
    (req(top_p=1.5), "INVALID_ARGUMENT", ["top_p: 1.5"]),
    (req(stop=["ok", ""]), "INVALID_ARGUMENT", ["stop[1]: empty"]),
    (req(stop=["s"] * 17), "INVALID_ARGUMENT", ["stop: 17 strings", "limit of 16"]),
    (req(request_id="r" * 300), "INVALID_ARGUMENT", ["request_id: 300 characters"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
async def gw(standin, monkeypatch):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    config = {
        "teachers": [anthropic_teacher(server.url, KEY_ENV, max_n=MAX_N, max_tokens=MAX_TOKENS)],
        "max_request_chars": MAX_CHARS,
        "max_messages": MAX_MESSAGES,
    }
    async with serving(config) as running:
        yield running, state


@pytest.mark.parametrize(("bad", "code", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
async def test_bad_requests_are_refused_precisely_without_a_backend_call(gw, bad, code, words):
    running, state = gw
    err = await call_error(running.stub.SampleChunks(bad))
    assert err.code().name == code
    for word in words:
        assert word in err.details(), (word, err.details())
    assert state.requests == []
    assert running.backend_calls("claude") == 0


async def test_a_bad_request_in_a_stream_fails_alone(gw):
    running, state = gw
    good = request("claude", max_tokens=8, request_id="good")
    bad = req(n=99, request_id="bad")
    replies = await gather_replies(running.stub, [bad, good, req(teacher="nope", request_id="x")])
    by_id = {r.request_id: r for r in replies}
    assert set(by_id) == {"bad", "good", "x"}
    assert by_id["good"].chunks and not by_id["good"].HasField("error")
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "n: 99" in by_id["bad"].error.message and not by_id["bad"].chunks
    assert by_id["x"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert len(state.requests) == 1  # the good one only


async def test_oversize_requests_are_invalid_argument_not_a_transport_error(gw):
    running, _ = gw
    huge = req(messages=[msg("user", "z" * 1_000_000)])  # far past max_request_chars
    err = await call_error(running.stub.SampleChunks(huge))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit of 2000" in err.details()


async def test_bytes_that_are_no_request_are_invalid_argument_and_a_stream_stays_open(gw):
    running, state = gw
    unary = running.channel.unary_unary("/omniopd.v1.TeacherGateway/SampleChunks")
    err = await call_error(unary(b"\xff" * 8))  # bytes in, no serializer
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: not a valid omniopd.v1.SampleRequest message" in err.details()

    stream = running.channel.stream_stream("/omniopd.v1.TeacherGateway/StreamChunks")

    async def source():
        yield request("claude", max_tokens=8, request_id="before").SerializeToString()
        yield b"\x0a\x05ab"  # request_id, cut short
        yield request("claude", max_tokens=8, request_id="after").SerializeToString()

    replies = [pb.SampleReply.FromString(r) async for r in stream(source())]
    answered = sorted(r.request_id for r in replies if r.chunks)
    failed = [r.error for r in replies if not r.chunks]
    assert answered == ["after", "before"] and len(failed) == 1
    assert failed[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(state.requests) == 1  # "after" is the same request as "before": cached


roles = st.sampled_from(["user", "assistant", "system", "tool", ""])
messages = st.lists(
    st.builds(pb.Message, role=roles, content=st.text(max_size=40)), min_size=0, max_size=7
)
requests = st.builds(
    pb.SampleRequest,
    teacher=st.sampled_from(["claude", "", "other"]),
    messages=messages,
    partial_answer=st.text(max_size=50),
    n=st.integers(0, 2**32 - 1),
    max_tokens=st.integers(0, 2**32 - 1),
    temperature=st.floats(allow_nan=True, allow_infinity=True),
    top_p=st.floats(allow_nan=True, allow_infinity=True),
    stop=st.lists(st.text(max_size=5), max_size=3),
    seed=st.integers(-(2**63), 2**63 - 1),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=requests)
async def test_any_request_gets_a_precise_answer_never_unknown_or_internal(gw, bad):
    running, _ = gw
    try:
        reply = await running.stub.SampleChunks(bad)
    except grpc.aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert ":" in err.details()  # "field: what is wrong"
    else:
        assert len(reply.chunks) == bad.n


def test_temperature_range_is_the_providers():
    """[0, 2] for every provider but anthropic, whose Messages API takes [0, 1]; refused before
    the limits, so a request the provider would refuse never counts as a backend call."""
    from omniopd.gateway.config import parse_config
    from omniopd.gateway.errors import GatewayError
    from omniopd.gateway.validation import validate

    config = parse_config({"teachers": [
        {"name": "gpt", "provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9"},
        {"name": "claude", "provider": "anthropic", "model": "m"},
    ]})  # fmt: skip
    teachers = {t.name: t for t in config.teachers}

    def check(teacher: str, temperature: float) -> None:
        validate(req(teacher=teacher, temperature=temperature), config, teachers)

    check("gpt", 2.0)
    check("claude", 1.0)
    with pytest.raises(GatewayError, match=r"temperature: 1.5 is outside \[0, 1\]"):
        check("claude", 1.5)
    with pytest.raises(GatewayError, match=r"temperature: 2.5 is outside \[0, 2\]$"):
        check("gpt", 2.5)
