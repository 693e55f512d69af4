"""Bad input, field by field: every field of ``SampleRequest`` at its bounds, in odd sizes and
odd unicode, empty and huge, and bytes that are not a ``SampleRequest`` at all. Each bad request
gets a precise status (``INVALID_ARGUMENT``, ``NOT_FOUND``) naming the field, never ``UNKNOWN``
or ``INTERNAL``, and costs no provider call; odd but valid values reach the provider intact.

tests/gateway/test_validation.py holds one example per rule; this is the exhaustive matrix. The
gateway fronts the anthropic and openai providers talking to LOCAL STAND-INS of the Messages
and Chat Completions APIs (``tests/gateway/standins``, not Anthropic's or OpenAI's services),
whose request logs count the provider calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
import pytest

from omniopd.proto.v1 import gateway_pb2 as pb
from tests.gateway.gwtools import Running, anthropic_teacher, call_error, serving
from tests.gateway.standins import anthropic_api, openai_api
from tests.gateway.standins.server import Received, StandIn
from tests.gateway.test_validation import MAX_CHARS, MAX_MESSAGES, MAX_N, MAX_TOKENS, msg, req

from .abuse import FIXED64, VARINT, key, length_delimited, varint

KEY = "sk-standin-bad-input-7c1f"
KEY_ENV = "STANDIN_BAD_INPUT_API_KEY"
METHOD = "/omniopd.v1.TeacherGateway/SampleChunks"
HUGE = 1_000_000  # characters; the gateway's gRPC message limit is above 4 * MAX_CHARS + 1 MiB
PRECISE = {"INVALID_ARGUMENT", "NOT_FOUND"}
FIELDS = {f.name for f in pb.SampleRequest.DESCRIPTOR.fields}
MESSAGE_FIELDS = {f"messages.{f.name}" for f in pb.Message.DESCRIPTOR.fields}


@dataclass
class Bad:
    field: str  # the SampleRequest field (``messages.role`` for a Message field)
    what: str
    request: pb.SampleRequest | bytes  # bytes: sent as they are
    code: str
    words: list[str] = field(default_factory=list)  # the details must contain each


def bad(field_: str, what: str, code: str = "INVALID_ARGUMENT", *words: str, **fields) -> Bad:
    return Bad(field_, what, req(**fields), code, list(words))


user = [msg("user", "What is 2+2?")]
BAD = [
    bad("request_id", "past 256 characters", "INVALID_ARGUMENT", "request_id: 257 characters", "limit of 256", request_id="r" * 257),
    bad("request_id", "huge", "INVALID_ARGUMENT", f"request_id: {HUGE} characters", request_id="r" * HUGE),
    bad("request_id", "257 emoji", "INVALID_ARGUMENT", "request_id: 257 characters", request_id="\U0001f600" * 257),
    bad("request_id", "a base letter and 256 combining marks", "INVALID_ARGUMENT", "request_id: 257", request_id="e" + "\u0301" * 256),
    bad("teacher", "empty", "INVALID_ARGUMENT", "teacher: required", "claude", teacher=""),
    bad("teacher", "unknown", "NOT_FOUND", "teacher: 'gpt-9'", "known teachers", teacher="gpt-9"),
    bad("teacher", "other case", "NOT_FOUND", "teacher: 'Claude'", teacher="Claude"),
    bad("teacher", "trailing space", "NOT_FOUND", "teacher: 'claude '", teacher="claude "),
    bad("teacher", "Cyrillic look-alike", "NOT_FOUND", "teacher:", teacher="\u0441laude"),
    bad("teacher", "right-to-left override", "NOT_FOUND", "teacher:", teacher="\u202eedualc"),
    bad("teacher", "combining mark", "NOT_FOUND", "teacher:", teacher="clau\u0301de"),
    bad("teacher", "NUL inside", "NOT_FOUND", "teacher: 'claude\\x00'", teacher="claude\x00"),
    bad("teacher", "huge", "NOT_FOUND", "teacher:", teacher="t" * HUGE),
    bad("messages", "empty list", "INVALID_ARGUMENT", "messages: required", messages=[]),
    bad("messages", "one past the limit", "INVALID_ARGUMENT", f"messages: {MAX_MESSAGES + 1} messages", f"limit of {MAX_MESSAGES}", messages=[msg("user")] * (MAX_MESSAGES + 1)),
    bad("messages", "10,000 messages", "INVALID_ARGUMENT", "messages: 10000 messages", messages=[msg("user")] * 10_000),
    bad("messages", "characters past the limit across messages", "INVALID_ARGUMENT", "messages: 2100 characters", f"limit of {MAX_CHARS}", messages=[msg("user", "a" * 700), msg("assistant", "b" * 700), msg("user", "c" * 700)]),
    bad("messages", "last one from the assistant", "INVALID_ARGUMENT", "messages[1].role", "last message must be 'user'", messages=[msg("user"), msg("assistant")]),
    bad("messages.role", "empty", "INVALID_ARGUMENT", "messages[0].role: ''", "user", messages=[msg("")]),
    bad("messages.role", "unknown", "INVALID_ARGUMENT", "messages[0].role: 'bot'", messages=[msg("bot")]),
    bad("messages.role", "other case", "INVALID_ARGUMENT", "messages[0].role: 'User'", messages=[msg("User")]),
    bad("messages.role", "tool", "INVALID_ARGUMENT", "messages[0].role: 'tool'", messages=[msg("tool")]),
    bad("messages.role", "trailing space", "INVALID_ARGUMENT", "messages[0].role", messages=[msg("user ")]),
    bad("messages.role", "zero-width space", "INVALID_ARGUMENT", "messages[0].role", messages=[msg("user\u200b")]),
    bad("messages.role", "fullwidth letters", "INVALID_ARGUMENT", "messages[0].role", messages=[msg("\uff55\uff53\uff45\uff52")]),
    bad("messages.role", "NUL inside", "INVALID_ARGUMENT", "messages[0].role: 'user\\x00'", messages=[msg("user\x00")]),
    bad("messages.role", "huge", "INVALID_ARGUMENT", "messages[0].role", messages=[msg("u" * HUGE)]),
    bad("messages.role", "system after user", "INVALID_ARGUMENT", "messages[1].role: 'system'", messages=[msg("user"), msg("system"), msg("user")]),
    bad("messages.content", "empty", "INVALID_ARGUMENT", "messages[0].content: empty", messages=[msg("user", "")]),
    bad("messages.content", "empty in a later message", "INVALID_ARGUMENT", "messages[2].content: empty", messages=[msg("user"), msg("assistant"), msg("user", "")]),
    bad("messages.content", "one past the limit", "INVALID_ARGUMENT", f"messages: {MAX_CHARS + 1} characters", messages=[msg("user", "x" * (MAX_CHARS + 1))]),
    bad("messages.content", "past the limit in emoji", "INVALID_ARGUMENT", f"messages: {MAX_CHARS + 1} characters", messages=[msg("user", "\U0001f600" * (MAX_CHARS + 1))]),
    bad("messages.content", "past the limit in combining marks", "INVALID_ARGUMENT", f"limit of {MAX_CHARS}", messages=[msg("user", "a" + "\u0308" * MAX_CHARS)]),
    bad("messages.content", "huge", "INVALID_ARGUMENT", f"messages: {HUGE} characters", messages=[msg("user", "z" * HUGE)]),
    bad("partial_answer", "past the limit with the question", "INVALID_ARGUMENT", "partial_answer", f"limit of {MAX_CHARS}", partial_answer="y" * MAX_CHARS),
    bad("partial_answer", "huge", "INVALID_ARGUMENT", "partial_answer", partial_answer="y" * HUGE),
    bad("partial_answer", "huge in right-to-left script", "INVALID_ARGUMENT", "partial_answer", partial_answer="\u05d0" * (HUGE // 2)),
    bad("n", "zero (unset)", "INVALID_ARGUMENT", "n: 0", f"1..{MAX_N}", n=0),
    bad("n", "one past max_n", "INVALID_ARGUMENT", f"n: {MAX_N + 1}", n=MAX_N + 1),
    bad("n", "uint32 max", "INVALID_ARGUMENT", f"n: {2**32 - 1}", n=2**32 - 1),
    bad("max_tokens", "zero", "INVALID_ARGUMENT", "max_tokens: 0", f"1..{MAX_TOKENS}", max_tokens=0),
    bad("max_tokens", "one past the teacher's", "INVALID_ARGUMENT", f"max_tokens: {MAX_TOKENS + 1}", max_tokens=MAX_TOKENS + 1),
    bad("max_tokens", "uint32 max", "INVALID_ARGUMENT", f"max_tokens: {2**32 - 1}", max_tokens=2**32 - 1),
    bad("temperature", "negative", "INVALID_ARGUMENT", "temperature: -0.1", "[0, 1]", temperature=-0.1),
    bad("temperature", "smallest negative double", "INVALID_ARGUMENT", "temperature: -5e-324", temperature=-5e-324),
    bad("temperature", "just above 2", "INVALID_ARGUMENT", "temperature: 2.0000000000000004", temperature=math.nextafter(2.0, 3.0)),
    bad("temperature", "largest double", "INVALID_ARGUMENT", "temperature:", temperature=1.7976931348623157e308),
    bad("temperature", "+inf", "INVALID_ARGUMENT", "temperature: inf", temperature=math.inf),
    bad("temperature", "-inf", "INVALID_ARGUMENT", "temperature: -inf", temperature=-math.inf),
    bad("temperature", "above 1 on an Anthropic teacher (the Messages API's maximum)", "INVALID_ARGUMENT", "temperature: 1.5", "[0, 1]", "Anthropic API's maximum", temperature=1.5),
    bad("temperature", "NaN", "INVALID_ARGUMENT", "temperature: nan", temperature=math.nan),
    bad("temperature", "negative NaN", "INVALID_ARGUMENT", "temperature: nan", temperature=-math.nan),
    bad("top_p", "zero", "INVALID_ARGUMENT", "top_p: 0.0", "(0, 1]", top_p=0.0),
    bad("top_p", "negative zero", "INVALID_ARGUMENT", "top_p: -0.0", top_p=-0.0),
    bad("top_p", "negative", "INVALID_ARGUMENT", "top_p: -1.0", top_p=-1.0),
    bad("top_p", "just above 1", "INVALID_ARGUMENT", "top_p: 1.0000000000000002", top_p=math.nextafter(1.0, 2.0)),
    bad("top_p", "+inf", "INVALID_ARGUMENT", "top_p: inf", top_p=math.inf),
    bad("top_p", "-inf", "INVALID_ARGUMENT", "top_p: -inf", top_p=-math.inf),
    bad("top_p", "NaN", "INVALID_ARGUMENT", "top_p: nan", top_p=math.nan),
    bad("stop", "an empty string", "INVALID_ARGUMENT", "stop[0]: empty", stop=[""]),
    bad("stop", "an empty string after a good one", "INVALID_ARGUMENT", "stop[1]: empty", stop=["ok", ""]),
    bad("stop", "one string past the limit", "INVALID_ARGUMENT", "stop: 17 strings", "limit of 16", stop=["s"] * 17),
    bad("stop", "100,000 strings", "INVALID_ARGUMENT", "stop: 100000 strings", stop=["s"] * 100_000),
    bad("stop", "a string one past 256 characters", "INVALID_ARGUMENT", "stop[0]: 257 characters", "limit of 256", stop=["s" * 257]),
    bad("stop", "a huge string", "INVALID_ARGUMENT", f"stop[0]: {HUGE} characters", stop=["s" * HUGE]),
    bad("stop", "257 emoji", "INVALID_ARGUMENT", "stop[1]: 257 characters", stop=["\n", "\U0001f600" * 257]),
]  # fmt: skip


def raw(*parts: bytes) -> bytes:
    return b"".join(parts)


# A valid request, field by field, to build malformed ones from.
TEACHER = length_delimited(2, b"claude")
MESSAGES = length_delimited(3, req().messages[0].SerializeToString())
N = key(5, VARINT) + varint(1)
VALID = raw(TEACHER, MESSAGES, N)
NOT_UTF8 = b"ab\xc3\x28"  # a two-byte sequence cut short
OVERLONG_VARINT = b"\xff" * 10 + b"\x01"  # 11 bytes: longer than any varint may be
NOT_A_REQUEST = ["request: not a valid omniopd.v1.SampleRequest message"]


def malformed(field_: str, what: str, data: bytes, words: list[str] = NOT_A_REQUEST) -> Bad:
    return Bad(field_, what, data, "INVALID_ARGUMENT", words)


MALFORMED = [
    malformed("request_id", "not UTF-8", raw(length_delimited(1, NOT_UTF8), VALID)),
    malformed("request_id", "length past the end", raw(VALID, key(1, 2), varint(100), b"abc")),
    malformed("teacher", "not UTF-8", raw(length_delimited(2, NOT_UTF8), MESSAGES, N)),
    malformed("teacher", "sent as a varint (an unknown field: no teacher)", raw(key(2, VARINT), varint(7), MESSAGES, N), ["teacher: required"]),
    malformed("messages", "not a Message inside", raw(TEACHER, length_delimited(3, b"\xff\xff\xff"), N)),
    malformed("messages", "sent as a fixed64 (an unknown field: no messages)", raw(TEACHER, key(3, FIXED64), b"\0" * 8, N), ["messages: required"]),
    malformed("messages.role", "not UTF-8", raw(TEACHER, length_delimited(3, length_delimited(1, NOT_UTF8) + length_delimited(2, b"hi")), N)),
    malformed("messages.content", "not UTF-8", raw(TEACHER, length_delimited(3, length_delimited(1, b"user") + length_delimited(2, NOT_UTF8)), N)),
    malformed("messages.content", "cut short", raw(TEACHER, key(3, 2), varint(40), length_delimited(1, b"user"))),
    malformed("partial_answer", "not UTF-8", raw(VALID, length_delimited(4, NOT_UTF8))),
    malformed("n", "a varint of 11 bytes", raw(TEACHER, MESSAGES, key(5, VARINT), OVERLONG_VARINT)),
    malformed("n", "sent as a string (an unknown field: n unset)", raw(TEACHER, MESSAGES, length_delimited(5, b"4")), ["n: 0"]),
    malformed("n", "-1 as a 64-bit varint (read as uint32 max)", raw(TEACHER, MESSAGES, key(5, VARINT), varint(-1)), [f"n: {2**32 - 1}"]),
    malformed("max_tokens", "a varint cut short", raw(VALID, key(6, VARINT), b"\xff\xff")),
    malformed("max_tokens", "-1 as a 64-bit varint (read as uint32 max)", raw(VALID, key(6, VARINT), varint(-1)), [f"max_tokens: {2**32 - 1}"]),
    malformed("temperature", "3 of its 8 bytes", raw(VALID, key(7, FIXED64), b"\0\0\0")),
    malformed("top_p", "3 of its 8 bytes", raw(VALID, key(8, FIXED64), b"\0\0\0")),
    malformed("stop", "not UTF-8", raw(VALID, length_delimited(9, NOT_UTF8))),
    malformed("seed", "a varint of 11 bytes", raw(VALID, key(10, VARINT), OVERLONG_VARINT)),
    malformed("cache", "a varint cut short", raw(VALID, key(11, VARINT), b"\x80")),
    malformed("*", "garbage", b"\xff" * 64),
    malformed("*", "a valid request cut short", VALID[:-5]),
    malformed("*", "an unknown field nested 200 groups deep", raw(VALID, key(15, 3) * 200, key(15, 4) * 200)),
    malformed("*", "nothing at all (every field unset)", b"", ["teacher: required"]),
]  # fmt: skip

# Odd but valid values: each must be answered, and what the provider receives must be what was
# sent. (field, what, request fields, teacher).
GOOD = [
    ("request_id", "empty", {"request_id": ""}),
    ("request_id", "256 characters", {"request_id": "r" * 256}),
    ("request_id", "right-to-left with an override", {"request_id": "\u202e\u05e9\u05dc\u05d5\u05dd-1"}),
    ("request_id", "NUL inside", {"request_id": "id\x00two"}),
    ("request_id", "emoji and combining marks", {"request_id": "\U0001f469\u200d\U0001f4bb-e\u0301"}),
    ("teacher", "the OpenAI-compatible teacher", {"teacher": "oai"}),
    ("messages", f"{MAX_MESSAGES}: system, user, assistant, user, with a second system", {"messages": [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4."), msg("user", "And 3+3?")]}),
    ("messages.role", "system first", {"messages": [msg("system", "Answer in Hebrew."), msg("user", "2+2?")]}),
    ("messages.content", "Arabic with a right-to-left mark", {"messages": [msg("user", "\u200f\u0643\u0645 \u064a\u0633\u0627\u0648\u064a 2+2\u061f")]}),
    ("messages.content", "stacked combining marks", {"messages": [msg("user", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O")]}),
    ("messages.content", "NUL and other control characters", {"messages": [msg("user", "a\x00b\x01c\x1bd\x7f")]}),
    ("messages.content", "exactly the character limit", {"messages": [msg("user", "q" * MAX_CHARS)]}),
    ("messages.content", "emoji with joiners and flags", {"messages": [msg("user", "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1ef\U0001f1f5 2+2?")]}),
    ("partial_answer", "whitespace only", {"partial_answer": "   "}),
    ("partial_answer", "ending in an ideographic space", {"partial_answer": "2 + 2 =\u3000"}),
    ("partial_answer", "NUL inside", {"partial_answer": "so\x00far"}),
    ("n", f"max_n ({MAX_N})", {"n": MAX_N}),
    ("max_tokens", "1", {"max_tokens": 1}),
    ("max_tokens", f"the teacher's ({MAX_TOKENS})", {"max_tokens": MAX_TOKENS}),
    ("temperature", "zero", {"temperature": 0.0}),
    ("temperature", "negative zero", {"temperature": -0.0}),
    ("temperature", "the smallest positive double", {"temperature": 5e-324}),
    ("temperature", "2 (on the OpenAI-compatible teacher)", {"teacher": "oai", "temperature": 2.0}),
    ("top_p", "the smallest positive double", {"top_p": 5e-324}),
    ("top_p", "1", {"top_p": 1.0}),
    ("stop", "16 strings", {"stop": [f"s{i}" for i in range(16)]}),
    ("stop", "256 characters", {"stop": ["s" * 256]}),
    ("stop", "NUL, a combining mark, right-to-left", {"stop": ["\x00", "\u0301", "\u05d0"]}),
    ("seed", "int64 min", {"teacher": "oai", "seed": -(2**63)}),
    ("seed", "int64 max", {"teacher": "oai", "seed": 2**63 - 1}),
    ("seed", "-1", {"teacher": "oai", "seed": -1}),
    ("seed", "int64 max on the anthropic teacher, which has no seed", {"seed": 2**63 - 1}),
    ("cache", "false", {"cache": False}),
    ("cache", "true", {"cache": True}),
]  # fmt: skip


@pytest.fixture(scope="module")
def standins():
    claude, claude_state = anthropic_api.start(api_key=KEY)
    oai, oai_state = openai_api.start(api_key=KEY)
    yield (claude, claude_state), (oai, oai_state)
    claude.stop()
    oai.stop()


@pytest.fixture
async def gw(standins, monkeypatch):
    (claude, claude_state), (oai, oai_state) = standins
    claude_state.reset()
    oai_state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    oai_teacher = {
        "name": "oai",
        "provider": "openai",
        "model": "qwen-teacher",
        "base_url": f"{oai.url}/v1",
        "api_key_env": KEY_ENV,
        "max_n": MAX_N,
        "max_tokens": MAX_TOKENS,
    }
    config = {
        "teachers": [
            anthropic_teacher(claude.url, KEY_ENV, max_n=MAX_N, max_tokens=MAX_TOKENS),
            oai_teacher,
        ],
        "max_request_chars": MAX_CHARS,
        "max_messages": MAX_MESSAGES,
    }
    async with serving(config) as running:
        yield Gateway(running, (claude_state, oai_state))


@dataclass
class Gateway:
    running: Running
    standins: tuple[StandIn, ...]

    @property
    def stub(self):
        return self.running.stub

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.running.channel

    def mark(self) -> tuple[int, ...]:
        return tuple(len(state.requests) for state in self.standins)

    def since(self, mark: tuple[int, ...]) -> list[Received]:
        """What the providers' stand-ins were sent after ``mark``."""
        return [r for state, n in zip(self.standins, mark, strict=True) for r in state.requests[n:]]

    def provider_calls(self) -> int:
        return sum(self.mark())

    def backend_calls(self) -> float:
        """The gateway's own count of backend calls, all teachers."""
        return sum(self.running.backend_calls(t) for t in ("claude", "oai"))


@dataclass
class Tally:
    sent: int = 0
    precise: int = 0
    server_errors: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, case: Bad, code: str, details: str, provider_calls: int) -> None:
        """Count one refusal (or acceptance) of ``case`` and note what is wrong with it."""
        self.sent += 1
        label = f"{case.field} ({case.what})"
        if code in ("UNKNOWN", "INTERNAL"):
            self.server_errors += 1
        ok = code == case.code and code in PRECISE and provider_calls == 0
        ok = ok and all(w in details for w in case.words) and len(details) < 1000
        ok = ok and "Traceback" not in details
        self.precise += ok
        if not ok:
            self.problems.append(
                f"{label}: {code} {details[:300]!r}, {provider_calls} provider call(s); "
                f"wanted {case.code} with {case.words}"
            )


def test_the_matrices_cover_every_field():
    """A field added to SampleRequest or Message must be added to the matrices too."""
    covered = {c.field for c in BAD} | {c.field for c in MALFORMED if c.field != "*"}
    assert covered == FIELDS | MESSAGE_FIELDS | {"messages"}
    assert {f for f, _, _ in GOOD} == FIELDS | MESSAGE_FIELDS


async def test_every_field_out_of_bounds_is_refused_precisely_without_a_provider_call(gw, ledger):
    """Each bad value alone (SampleChunks), then all of them on one stream with good requests
    between them: each fails alone with the same status, the good ones are answered."""
    tally = Tally()
    for case in BAD:
        before = gw.provider_calls()
        try:
            reply = await gw.stub.SampleChunks(case.request, timeout=60)
        except grpc.aio.AioRpcError as err:
            tally.check(case, err.code().name, err.details() or "", gw.provider_calls() - before)
        else:
            tally.check(case, "OK", f"answered with {len(reply.chunks)} chunks", 0)
    assert gw.backend_calls() == 0  # every refusal came before the limits and the provider

    # The same requests on one stream, with two good ones: replies matched by request id.
    sent: dict[str, Bad] = {}
    requests = []
    for i, case in enumerate(BAD):
        r = pb.SampleRequest()
        r.CopyFrom(case.request)
        if case.field != "request_id":
            r.request_id = f"bad-{i}"
        sent[r.request_id] = case
        requests.append(r)
        if i in (0, len(BAD) // 2):
            requests.append(req(request_id=f"good-{i}", max_tokens=8, cache=False))
    assert len(sent) == len(BAD)  # request ids are unique

    async def source():
        for r in requests:
            yield r

    before = gw.provider_calls()
    replies = [r async for r in gw.stub.StreamChunks(source(), timeout=120)]
    by_id = {r.request_id: r for r in replies}
    assert len(replies) == len(by_id) == len(requests)  # one reply each, none lost or doubled
    good = [r for i, r in by_id.items() if i.startswith("good-")]
    assert len(good) == 2 and all(r.chunks and not r.HasField("error") for r in good)
    assert gw.provider_calls() - before == 2  # the good ones only
    for request_id, case in sent.items():
        error = by_id[request_id].error
        tally.check(case, _code(error.code).name, error.message, 0)
        if by_id[request_id].chunks:
            tally.problems.append(f"{case.field} ({case.what}): chunks in a failed reply")

    ledger.add(
        "bad input",
        requests=tally.sent,
        failed_alone=tally.precise,
        server_errors=tally.server_errors,
        notes={"fields": sorted(FIELDS), "cases": len(BAD), "via": "SampleChunks, StreamChunks"},
    )
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.precise == tally.sent == 2 * len(BAD)


def _code(value: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == value)


async def test_bytes_that_are_no_valid_request_are_refused_precisely(gw, ledger):
    """Raw bytes through a generic call: wrong wire types, cut-short values, bad UTF-8, endless
    nesting. INVALID_ARGUMENT each (the call never ends as UNKNOWN), and no provider call; on a
    stream, each fails alone and the requests around it are answered."""
    call = gw.channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
    tally = Tally()
    for case in MALFORMED:
        before = gw.provider_calls()
        try:
            await call(case.request, timeout=60)
        except grpc.aio.AioRpcError as err:
            tally.check(case, err.code().name, err.details() or "", gw.provider_calls() - before)
        else:
            tally.check(case, "OK", "answered", 0)

    listing = gw.channel.unary_unary("/omniopd.v1.TeacherGateway/ListTeachers")
    err = await call_error(listing(b"\xff\xff", timeout=30))
    words = ["request: not a valid omniopd.v1.ListTeachersRequest message"]
    tally.check(
        Bad("*", "ListTeachers: garbage", b"", "INVALID_ARGUMENT", words),
        err.code().name,
        err.details(),
        0,
    )

    # On a stream: good, malformed, good, ... The malformed ones get error replies (no request
    # id can be read from them), the good ones their chunks, and the stream ends OK.
    stream = gw.channel.stream_stream("/omniopd.v1.TeacherGateway/StreamChunks")
    messages = []
    for i, case in enumerate(MALFORMED):
        messages.append(req(request_id=f"good-{i}", max_tokens=4).SerializeToString())
        messages.append(case.request)

    async def source():
        for m in messages:
            yield m

    before = gw.provider_calls()
    replies = [pb.SampleReply.FromString(r) async for r in stream(source(), timeout=120)]
    assert len(replies) == len(messages)
    answered = sorted(r.request_id for r in replies if r.chunks)
    assert answered == sorted(f"good-{i}" for i in range(len(MALFORMED)))
    assert gw.provider_calls() - before <= len(MALFORMED)  # the good ones (or their cache) only
    # Failed replies come in completion order and carry no request id to match them by: each
    # must be INVALID_ARGUMENT naming what was wrong, as the unary calls above were.
    failed = [r for r in replies if not r.chunks]
    named = {"request", "teacher", "messages", "n", "max_tokens"}
    for reply in failed:
        tally.sent += 1
        code = _code(reply.error.code).name
        tally.server_errors += code in ("UNKNOWN", "INTERNAL")
        field_ = reply.error.message.partition(":")[0]
        if code == "INVALID_ARGUMENT" and field_ in named:
            tally.precise += 1
        else:
            tally.problems.append(f"stream: {code} {reply.error.message[:200]!r}")
    ledger.add(
        "bad input",
        requests=tally.sent,
        failed_alone=tally.precise,
        server_errors=tally.server_errors,
        notes={"malformed_messages": len(MALFORMED), "via": "generic unary and stream calls"},
    )
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.precise == tally.sent == 2 * len(MALFORMED) + 1 and tally.server_errors == 0


async def test_odd_but_valid_values_reach_the_provider_intact(gw):
    """Unicode that is odd but valid (right-to-left, combining marks, NUL, emoji), values at the
    bounds, int64 seeds: answered, the request id echoed exactly, and the provider got the text
    and the seed as they were sent."""
    problems = []
    for field_, what, fields in GOOD:
        request = req(**({"max_tokens": 8, "cache": False} | fields))
        before = gw.mark()
        try:
            reply = await gw.stub.SampleChunks(request, timeout=60)
        except grpc.aio.AioRpcError as err:
            problems.append(f"{field_} ({what}): {err.code().name} {err.details()!r}")
            continue
        if reply.request_id != request.request_id or len(reply.chunks) != request.n:
            problems.append(f"{field_} ({what}): reply {reply.request_id!r}, {len(reply.chunks)}")
        calls = gw.since(before)
        if not calls and not reply.cached:
            problems.append(f"{field_} ({what}): no provider call and not cached")
            continue
        sent_texts = _strings([c.body for c in calls])
        for m in request.messages:
            if calls and not any(m.content in s for s in sent_texts):
                problems.append(f"{field_} ({what}): {m.content[:40]!r} did not reach the provider")
        if calls and request.HasField("seed") and request.teacher == "oai":
            seeds = {c.body.get("seed") for c in calls}
            if seeds != {request.seed}:
                problems.append(f"seed ({what}): the provider got {seeds}, not {request.seed}")
    assert not problems, "\n".join(problems)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
