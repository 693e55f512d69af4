"""Size caps: an oversize request is refused before it is read into memory, wherever the server
can tell in time, and the service stays healthy.

- Verifier: a body whose ``Content-Length`` is past ``max_body_bytes`` gets 413 while the client
  has sent a few bytes of it (raw HTTP over a socket: the test decides what is sent, and when);
  a chunked body gets 413 at the first chunk past the cap, with the rest never sent; a body at
  the cap is served. (tests/verifier/test_api.py covers the 413s of the other limits.)
- Gateway: a message past gRPC's ``max_receive_message_length`` gets ``RESOURCE_EXHAUSTED`` and
  the ``omniopd-gateway`` process's peak resident memory does not grow by the message's size;
  an oversize message in a stream ends that stream alone. (tests/gateway/test_validation.py
  covers a large request under the gRPC limit: ``INVALID_ARGUMENT`` naming the character
  limit.)

The gateway's teacher is the anthropic provider talking to a LOCAL STAND-IN of the Messages API
(``tests/gateway/standins``, not Anthropic's service).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omniopd.gateway.server import MESSAGE_SLACK_BYTES
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc
from tests.gateway.gwtools import anthropic_teacher, request
from tests.gateway.standins import anthropic_api
from tests.trainer.stack import Process, service_env

from .abuse import RawHTTP, verifier_server

TOKEN = "size-caps-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
MAX_BODY = 32_768
SCORE = {"groups": [{"drafts": ["x = 4", "x = 5"], "teacher": ["x = 4"]}]}
ROUTES = ("/v1/score", "/v1/embeddings")
BODIES = {"/v1/score": SCORE, "/v1/embeddings": {"input": ["x = 4"]}}
KEY = "sk-standin-size-caps-0b9e"
KEY_ENV = "STANDIN_SIZE_CAPS_API_KEY"
MAX_REQUEST_CHARS = 100_000
GRPC_LIMIT = 4 * MAX_REQUEST_CHARS + MESSAGE_SLACK_BYTES
HUGE_MESSAGE = 128 * 2**20  # bytes: 128 MiB, well over the gateway's gRPC limit


@dataclass
class Tally:
    sent: int = 0
    refused: int = 0
    server_errors: int = 0
    notes: dict = field(default_factory=dict)

    def count(self, status: int | str, refused: bool) -> None:
        self.sent += 1
        self.refused += refused
        self.server_errors += status in ("UNKNOWN", "INTERNAL") or (
            isinstance(status, int) and status >= 500
        )


@pytest.fixture(scope="module")
def verifier():
    with verifier_server(token=TOKEN, max_body_bytes=MAX_BODY) as server:
        yield server


def padded(body: dict, size: int) -> bytes:
    """``body`` as JSON, padded with spaces (still valid JSON) to exactly ``size`` bytes."""
    data = json.dumps(body).encode()
    assert len(data) <= size
    return data + b" " * (size - len(data))


def assert_too_large(response, limit: str = "OMNIOPD_VERIFIER_MAX_BODY_BYTES") -> None:
    assert response.status == 413, (response.status, response.body[:300])
    error = json.loads(response.body)["error"]
    assert error["param"] == "body" and error["code"] == "body_too_large"
    assert limit in error["message"] and str(MAX_BODY) in error["message"]


def test_verifier_refuses_oversize_bodies_before_reading_them(verifier, ledger):
    tally = Tally()
    for path in ROUTES:
        # Declared past the cap (up to a terabyte), a few bytes sent: 413 comes back at once.
        for declared in (MAX_BODY + 1, 10**12):
            for headers in (AUTH, {"Content-Type": "application/json"}):  # with or without token
                with RawHTTP(verifier.port) as conn:
                    conn.head("POST", path, headers | {"Content-Length": str(declared)})
                    conn.body(b'{"groups": [')
                    answer = conn.read()
                    assert conn.sent == 12  # the 413 came without the rest of the body
                assert_too_large(answer)
                tally.count(answer.status, answer.status == 413)

        # Chunked, so no length up front: 413 at the first chunk past the cap, the rest unsent.
        with RawHTTP(verifier.port) as conn:
            conn.head("POST", path, AUTH | {"Transfer-Encoding": "chunked"})
            while conn.sent <= MAX_BODY:
                conn.chunk(b" " * 4096)
            answer = conn.read()
        assert conn.sent <= MAX_BODY + 4096
        assert_too_large(answer)
        tally.count(answer.status, answer.status == 413)

        # At the cap, whole or chunked, the body is read and served; one byte more is refused.
        body = padded(BODIES[path], MAX_BODY)
        with RawHTTP(verifier.port) as conn:
            conn.head("POST", path, AUTH | {"Content-Length": str(MAX_BODY)})
            conn.body(body)
            answer = conn.read()
        assert answer.status == 200, answer.body[:300]
        with RawHTTP(verifier.port) as conn:
            conn.head("POST", path, AUTH | {"Transfer-Encoding": "chunked"})
            for at in range(0, len(body), 5000):
                conn.chunk(body[at : at + 5000])
            conn.chunk(b"")
            answer = conn.read()
        assert answer.status == 200, answer.body[:300]
        with RawHTTP(verifier.port) as conn:
            conn.head("POST", path, AUTH | {"Content-Length": str(MAX_BODY + 1)})
            conn.body(body + b" ")
            answer = conn.read()
        assert_too_large(answer)
        tally.count(answer.status, answer.status == 413)

    # Still healthy, and the refusals are in the metrics.
    with RawHTTP(verifier.port) as conn:
        conn.head("GET", "/metrics", {})
        metrics = conn.read().body.decode()
    refused = sum(
        float(m[1])
        for m in re.finditer(r'requests_total\{route="/v1/\w+",status="413"\} (\S+)', metrics)
    )
    assert refused == tally.refused
    with RawHTTP(verifier.port) as conn:
        conn.head("GET", "/readyz", {})
        assert conn.read().status == 200
    ledger.add(
        "size caps",
        requests=tally.sent,
        failed_alone=tally.refused,
        server_errors=tally.server_errors,
        notes={"service": "verifier", "max_body_bytes": MAX_BODY, "largest_declared": 10**12},
    )
    assert tally.refused == tally.sent and tally.server_errors == 0


@pytest.fixture
def gateway_process(tmp_path):
    """The real ``omniopd-gateway`` command, its teacher behind the stand-in: (port, process)."""
    server, _ = anthropic_api.start(api_key=KEY)
    config = {
        "teachers": [anthropic_teacher(server.url, KEY_ENV)],
        "max_request_chars": MAX_REQUEST_CHARS,
    }
    path = tmp_path / "teachers.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "omniopd.gateway", "--config", str(path), "--port", "0"]
    proc = Process.start(command, env=service_env(**{KEY_ENV: KEY}))
    try:
        ready = proc.wait_for(re.compile(r"serving 1 teacher\(s\) on [\d.]+:(\d+)"), timeout=120)
        yield int(ready[1]), proc
    finally:
        proc.stop()
        server.stop()


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_gateway_refuses_oversize_messages_without_reading_them(gateway_process, ledger):
    port, proc = gateway_process
    tally = Tally()
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.TeacherGatewayStub(channel)
        assert stub.SampleChunks(request("claude"), timeout=60).chunks
        peak_before = peak_rss_kib(proc.proc.pid)

        # Just past the gRPC limit, and far past it: RESOURCE_EXHAUSTED naming the sizes.
        for size in (GRPC_LIMIT + 1, HUGE_MESSAGE):
            oversize = request("claude", content="x" * size)
            try:
                stub.SampleChunks(oversize, timeout=120)
                status, details = "OK", ""
            except grpc.RpcError as err:
                status, details = err.code().name, err.details()
            tally.count(status, status == "RESOURCE_EXHAUSTED")
            assert status == "RESOURCE_EXHAUSTED", (status, details)
            assert "larger than max" in details and str(GRPC_LIMIT) in details
            del oversize
        peak_growth_kib = peak_rss_kib(proc.proc.pid) - peak_before
        # The 128 MiB message was never held whole: the peak grew by far less than its size.
        assert peak_growth_kib * 1024 < HUGE_MESSAGE / 4, peak_growth_kib

        # In a stream, it ends that stream alone: a new one is served.
        def oversize_stream():
            yield request("claude", content="y" * (GRPC_LIMIT + 1), request_id="big")

        try:
            list(stub.StreamChunks(oversize_stream(), timeout=120))
            status = "OK"
        except grpc.RpcError as err:
            status = err.code().name
        tally.count(status, status == "RESOURCE_EXHAUSTED")
        assert status == "RESOURCE_EXHAUSTED"
        replies = list(stub.StreamChunks(iter([request("claude", request_id="after")]), timeout=60))
        assert [r.request_id for r in replies] == ["after"] and replies[0].chunks

        # The process is healthy and serving.
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.SampleChunks(request("claude", content="Still there?"), timeout=60).chunks
    assert proc.proc.poll() is None
    ledger.add(
        "size caps",
        requests=tally.sent,
        failed_alone=tally.refused,
        server_errors=tally.server_errors,
        notes={
            "service": "gateway",
            "grpc_limit_bytes": GRPC_LIMIT,
            "largest_message_bytes": HUGE_MESSAGE,
            "peak_rss_growth_kib": peak_growth_kib,
        },
    )
    assert tally.refused == tally.sent and tally.server_errors == 0
