"""Bearer auth on both services: every RPC of the gateway and every route of the verifier but
health (and what the docs keep open) refuses a missing, wrong or mangled token with
``UNAUTHENTICATED`` / 401, the same answer whatever was wrong; health stays open; and the token
is compared with ``hmac.compare_digest`` whatever the length of what was sent.

The gateway fronts the anthropic provider talking to a LOCAL STAND-IN of the Messages API
(``tests/gateway/standins``, not Anthropic's service), whose request log shows that refused
calls never reached it. ``hmac.compare_digest`` is wrapped (and still called) to count and
record the comparisons; it is the standard library's, not the code under test.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from starlette.routing import Route

from omniopd.gateway.service import SERVICE_NAME
from omniopd.proto.v1 import gateway_pb2 as pb
from tests.gateway.gwtools import anthropic_teacher, request, serving
from tests.gateway.standins import anthropic_api

from .abuse import RawHTTP, RawResponse, verifier_server

KEY = "sk-standin-auth-41d7"
KEY_ENV = "STANDIN_AUTH_API_KEY"
TOKEN = f"tok-{secrets.token_hex(16)}"
ANOTHER = f"tok-{secrets.token_hex(16)}"
SAME_LENGTH = TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1")
assert len(SAME_LENGTH) == len(TOKEN) == len(ANOTHER)

# (what, headers): each must be refused by both services.
BAD_CREDENTIALS = [
    ("no authorization", []),
    ("another token of the same length", [f"Bearer {ANOTHER}"]),
    ("the token with its last character changed", [f"Bearer {SAME_LENGTH}"]),
    ("the token less its last character", [f"Bearer {TOKEN[:-1]}"]),
    ("the token and one more character", [f"Bearer {TOKEN}x"]),
    ("the token twice", [f"Bearer {TOKEN}{TOKEN}"]),
    ("the token with a space inside", [f"Bearer {TOKEN[:8]} {TOKEN[8:]}"]),
    ("the token then a second credential", [f"Bearer {TOKEN}, Bearer {ANOTHER}"]),
    ("an empty token", ["Bearer "]),
    ("the scheme alone", ["Bearer"]),
    ("the token without a scheme", [TOKEN]),
    ("the Basic scheme", [f"Basic {TOKEN}"]),
    ("Basic with user:token in base64", ["Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()]),
    ("the Token scheme", [f"Token {TOKEN}"]),
    ("a wrong token first, the right one second", [f"Bearer {ANOTHER}", f"Bearer {TOKEN}"]),
]  # fmt: skip
# gRPC sends metadata values as they are (HTTP/1.1 strips spaces around a header value).
GRPC_ONLY = [
    ("a space before the scheme", [f" Bearer {TOKEN}"]),
    ("a space after the token", [f"Bearer {TOKEN} "]),
]
GOOD = [f"Bearer {TOKEN}"]
# Routes the verifier serves without a token, as docs/verifier.md says: health, readiness,
# metrics, and the API's description.
VERIFIER_OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
VERIFIER_BODIES = {
    "/v1/score": {"groups": [{"drafts": ["x = 4", "x = 5"], "teacher": ["x = 4"]}]},
    "/v1/embeddings": {"input": ["x = 4"]},
}


class Comparisons:
    """Every ``hmac.compare_digest`` call: the lengths compared and whether they matched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        original = hmac.compare_digest

        def compare_digest(a, b) -> bool:
            same = original(a, b)
            self.calls.append((len(a), len(b), same))
            return same

        monkeypatch.setattr(hmac, "compare_digest", compare_digest)

    def take(self) -> list[tuple[int, int, bool]]:
        calls, self.calls = self.calls, []
        return calls


@dataclass
class Tally:
    sent: int = 0
    refused: int = 0
    server_errors: int = 0
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=KEY)
    yield server, state
    server.stop()


async def gateway_call(channel: grpc.aio.Channel, method, metadata, write: bool = True) -> str:
    """Call ``method`` (a descriptor) with a valid request; the status code's name.

    ``write=False`` opens a client stream and closes it without a request: a call the gateway
    refuses on its metadata alone. Writing into a stream the gateway has just refused can fail
    inside gRPC Core, and grpc.aio then reports the call as ``INTERNAL`` in place of the
    gateway's status (seen once in a loaded `make test`), a client-side race, not an answer.
    """
    path = f"/{SERVICE_NAME}/{method.name}"
    message = request("claude", max_tokens=4) if method.name != "ListTeachers" else None
    data = message.SerializeToString() if message is not None else b""
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(metadata=metadata, timeout=30)
            if write:
                await call.write(data)
            await call.done_writing()
            _ = [r async for r in call]
        else:
            await channel.unary_unary(path)(data, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    return "OK"


async def test_gateway_refuses_every_rpc_without_the_token_and_keeps_health_open(
    standin, monkeypatch, ledger
):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    comparisons = Comparisons(monkeypatch)
    methods = pb.DESCRIPTOR.services_by_name["TeacherGateway"].methods
    tally = Tally()
    answers: Counter[str] = Counter()
    config = {"teachers": [anthropic_teacher(server.url, KEY_ENV)]}
    async with serving(config, token=TOKEN) as gw:
        for what, values in [*BAD_CREDENTIALS, *GRPC_ONLY]:
            metadata = tuple(("authorization", v) for v in values) or None
            for method in methods:
                answer = await gateway_call(gw.channel, method, metadata, write=False)
                tally.sent += 1
                answers[answer] += 1
                if answer.startswith("UNAUTHENTICATED"):
                    tally.refused += 1
                else:
                    tally.problems.append(f"{method.name} with {what}: {answer}")
                tally.server_errors += answer.startswith(("UNKNOWN", "INTERNAL"))
                compared = comparisons.take()
                # One comparison per call that carried a token, through compare_digest, whatever
                # its length: no shortcut on a length mismatch.
                if values and [(a, b) for a, b, _ in compared] != [
                    (len(values[0].encode()), len(f"Bearer {TOKEN}"))
                ]:
                    tally.problems.append(f"{method.name} with {what}: compared {compared}")
        refused_calls = len(state.requests)

        # The right token opens every RPC (through one successful comparison each).
        for method in methods:
            answer = await gateway_call(gw.channel, method, (("authorization", GOOD[0]),))
            tally.sent += 1
            assert answer == "OK", (method.name, answer)
            assert [same for _, _, same in comparisons.take()] == [True]

        # Health and reflection need no token.
        health = health_pb2_grpc.HealthStub(gw.channel)
        for service in ("", SERVICE_NAME):
            status = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=service))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            tally.sent += 2
        stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([ask]))]
        listed = {s.name for s in replies[0].list_services_response.service}
        assert SERVICE_NAME in listed and "grpc.health.v1.Health" in listed
        tally.sent += 1

    ledger.add(
        "auth",
        requests=tally.sent,
        failed_alone=tally.refused,
        server_errors=tally.server_errors,
        notes={
            "service": "gateway",
            "rpcs": [m.name for m in methods],
            "open": "health, reflection",
        },
    )
    assert not tally.problems, "\n".join(tally.problems)
    assert refused_calls == 0  # nothing refused reached the provider
    # Whatever was wrong, the answer is the same: it tells nothing about the token.
    assert len(answers) == 1 and "Bearer" in next(iter(answers)) and TOKEN not in str(answers)
    assert tally.refused == len(methods) * (len(BAD_CREDENTIALS) + len(GRPC_ONLY))


def verifier_call(port: int, method: str, path: str, authorization: list[bytes]) -> RawResponse:
    """One request with these ``Authorization`` header values, byte for byte."""
    body = json.dumps(VERIFIER_BODIES.get(path, {})).encode() if method == "POST" else b""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head.append(f"Content-Length: {len(body)}")
    lines = [h.encode() for h in head] + [b"Authorization: " + v for v in authorization]
    with RawHTTP(port) as conn:
        conn.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return conn.read()


@pytest.fixture(scope="module")
def verifier():
    with verifier_server(token=TOKEN) as server:
        yield server


def test_verifier_refuses_every_route_but_health_without_the_token(verifier, monkeypatch, ledger):
    comparisons = Comparisons(monkeypatch)
    # Every operation the API describes, and the routes it serves outside its description.
    operations = [
        (method.upper(), path, bool(op.get("security")))
        for path, item in verifier.app.openapi()["paths"].items()
        for method, op in item.items()
    ]
    protected = [(m, p) for m, p, _ in operations if p not in VERIFIER_OPEN]
    assert [(m, p) for m, p, secured in operations if secured] == protected
    undescribed = {r.path for r in verifier.app.routes if isinstance(r, Route)}
    assert undescribed <= VERIFIER_OPEN
    assert {p for _, p in protected} <= set(VERIFIER_BODIES), "add a valid body for new routes"
    tally = Tally()
    bodies: Counter[str] = Counter()
    # Raw HTTP: client libraries refuse to send some of these values (a tab, a byte past ASCII).
    raw_only = [
        ("a tab after the scheme", [f"Bearer\t{TOKEN}".encode()]),
        ("a byte past ASCII after the token", [f"Bearer {TOKEN}".encode() + b"\xe9"]),
    ]
    cases = [(what, [v.encode() for v in values]) for what, values in BAD_CREDENTIALS] + raw_only
    for method, path in protected:
        for what, values in cases:
            answer = verifier_call(verifier.port, method, path, values)
            tally.sent += 1
            tally.server_errors += answer.status >= 500
            error = json.loads(answer.body).get("error", {}) if answer.status == 401 else {}
            if answer.status == 401 and answer.headers.get("www-authenticate") == "Bearer":
                tally.refused += 1
                bodies[f"{error.get('type')}: {error.get('message')}"] += 1
            else:
                tally.problems.append(f"{method} {path} with {what}: {answer.status}")
            compared = comparisons.take()
            if [b for _, b, _ in compared] != [len(TOKEN)] or any(s for *_, s in compared):
                tally.problems.append(f"{method} {path} with {what}: compared {compared}")
        answer = verifier_call(verifier.port, method, path, [GOOD[0].encode()])
        tally.sent += 1
        assert answer.status == 200, answer.body
        assert [s for *_, s in comparisons.take()] == [True]
    for path in VERIFIER_OPEN:
        answer = verifier_call(verifier.port, "GET", path, [])
        tally.sent += 1
        assert answer.status == 200, (path, answer.status, answer.body[:200])
    ledger.add(
        "auth",
        requests=tally.sent,
        failed_alone=tally.refused,
        server_errors=tally.server_errors,
        notes={"service": "verifier", "routes": protected, "open": sorted(VERIFIER_OPEN)},
    )
    assert not tally.problems, "\n".join(tally.problems)
    # Missing and wrong tokens get one answer each, whatever was wrong, naming no token.
    assert len(bodies) == 1 and TOKEN not in str(bodies)
    assert tally.refused == len(protected) * len(cases)
