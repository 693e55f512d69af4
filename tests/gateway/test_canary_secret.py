"""Canary keys never leave the gateway: not in its logs, errors, replies, metrics or cache.

The real ``omniopd-gateway`` process runs at DEBUG with Redis, with four provider keys and a
bearer token whose variable names carry no ``_API_KEY``/``_TOKEN`` suffix (so nothing is masked
by name alone). Two teachers talk to the LOCAL STAND-IN of the Messages API and two to the
LOCAL STAND-IN of an OpenAI-compatible server (``tests/gateway/standins``, not Anthropic's or
OpenAI's services): one key of each pair is wrong, and the stand-in answers 401 echoing the key
it was given, as a careless proxy might. Injected 429 and 5xx add retry logging.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
import redis
import yaml

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

from .gwtools import anthropic_teacher, request
from .standins import anthropic_api, openai_api
from .standins.server import Fault

GOOD_KEY = f"sk-ant-canary-good-{uuid.uuid4().hex}"
WRONG_KEY = f"sk-ant-canary-wrong-{uuid.uuid4().hex}"
OPENAI_GOOD_KEY = f"sk-proj-canary-good-{uuid.uuid4().hex}"
OPENAI_WRONG_KEY = f"sk-proj-canary-wrong-{uuid.uuid4().hex}"
GATEWAY_PASS = f"gw-canary-{uuid.uuid4().hex}"
CANARIES = (GOOD_KEY, WRONG_KEY, OPENAI_GOOD_KEY, OPENAI_WRONG_KEY, GATEWAY_PASS)


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=GOOD_KEY)
    yield server, state
    server.stop()


@pytest.fixture(scope="module")
def openai_standin():
    server, state = openai_api.start(api_key=OPENAI_GOOD_KEY)
    yield server, state
    server.stop()


def openai_teacher(url: str, key_env: str, name: str, **fields) -> dict:
    return {
        "name": name,
        "provider": "openai",
        "model": "qwen-teacher",
        "base_url": f"{url}/v1",
        "api_key_env": key_env,
        **fields,
    }


class Stderr:
    """Reads a process's stderr in a thread, so it never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)}")

    def join(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def test_canary_keys_appear_nowhere(tmp_path, standin, openai_standin, redis_url, redis_prefix):
    server, state = standin
    oai_server, oai_state = openai_standin
    state.reset()
    oai_state.reset()
    config = {
        "teachers": [
            anthropic_teacher(server.url, "CANARY_GOOD_SECRET", name="good", max_retries=3),
            anthropic_teacher(server.url, "CANARY_WRONG_SECRET", name="wrong", max_retries=0),
            openai_teacher(oai_server.url, "CANARY_OAI_GOOD", name="oai-good", max_retries=3),
            openai_teacher(oai_server.url, "CANARY_OAI_WRONG", name="oai-wrong", max_retries=0),
        ]
    }
    path = tmp_path / "teachers.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "CANARY_GOOD_SECRET": GOOD_KEY,
        "CANARY_WRONG_SECRET": WRONG_KEY,
        "CANARY_OAI_GOOD": OPENAI_GOOD_KEY,
        "CANARY_OAI_WRONG": OPENAI_WRONG_KEY,
        "CANARY_GATEWAY_PASS": GATEWAY_PASS,
        "REDIS_URL": redis_url,
        "OMNIOPD_GATEWAY_REDIS_PREFIX": redis_prefix,
    }
    command = [sys.executable, "-m", "omniopd.gateway", "--config", str(path), "--port", "0"]
    command += ["--metrics-port", "0", "--token-env", "CANARY_GATEWAY_PASS"]
    command += ["--log-level", "DEBUG", "--log-format", "json"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    stderr = Stderr(proc)
    seen: list[str] = []  # everything a client or an operator gets to see
    try:
        metrics_port = int(stderr.wait_for(r"metrics on http://[\d.]+:(\d+)/metrics")[1])
        port = int(stderr.wait_for(r"serving 4 teacher\(s\) on [\d.]+:(\d+)")[1])
        auth = (("authorization", f"Bearer {GATEWAY_PASS}"),)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TeacherGatewayStub(channel)
            state.inject(Fault(status=429, retry_after=0.05), Fault(status=503))
            oai_state.inject(Fault(status=429, retry_after=0.05), Fault(status=503))
            refused = []
            for teacher in ("good", "good", "wrong", "oai-good", "oai-good", "oai-wrong"):
                ask = request(teacher, content=f"Question for {teacher}?", n=2)
                try:
                    seen.append(str(stub.SampleChunks(ask, metadata=auth, timeout=30)))
                except grpc.RpcError as err:
                    seen += [err.details(), str(err.trailing_metadata())]
                    refused.append((teacher, err.code(), err.details()))
            assert [r[:2] for r in refused] == [
                ("wrong", grpc.StatusCode.FAILED_PRECONDITION),
                ("oai-wrong", grpc.StatusCode.FAILED_PRECONDITION),
            ]
            assert all("HTTP 401" in r[2] for r in refused)
            try:
                stub.SampleChunks(request("good"), metadata=(("authorization", "Bearer x"),))
            except grpc.RpcError as err:
                seen.append(err.details())
            seen.append(str(stub.ListTeachers(pb.ListTeachersRequest(), metadata=auth)))
            asks = [
                request(t, content="Streamed question?", request_id=t)
                for t in ("wrong", "oai-wrong")
            ]
            replies = list(stub.StreamChunks(iter(asks), metadata=auth))
            assert len(replies) == 2
            assert {r.error.code for r in replies} == {grpc.StatusCode.FAILED_PRECONDITION.value[0]}
            seen += [str(r) for r in replies]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        seen.append(metrics.decode())
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{redis_prefix}*"):
            value = client.dump(key) or b""
            seen.append(key.decode(errors="replace") + value.decode(errors="replace"))
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    logs = stderr.join()
    seen.append(logs)

    # The test saw real traffic: retries, a refused key, cached entries, debug logs.
    assert len(state.requests) >= 5 and len(oai_state.requests) >= 4
    assert "retrying" in logs and '"level": "debug"' in logs
    assert any("cache:" in s for s in seen)
    for teacher in ("good", "oai-good"):
        retried = f'omniopd_gateway_retries_total{{kind="rate_limited",teacher="{teacher}"}} 1.0'
        assert retried in metrics.decode()
    for canary in CANARIES:
        leaks = [s[:200] for s in seen if canary in s]
        assert not leaks, f"canary {canary[:14]}... leaked into: {leaks}"
