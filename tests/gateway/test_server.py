"""The gRPC server: unary and streaming sampling, ListTeachers, health, reflection, auth, graceful
stop, and the ``omniopd-gateway`` command with its metrics endpoint.

Teachers: the toy ``hf`` teacher (a real model) and the anthropic provider talking to a LOCAL
STAND-IN of the Messages API (``tests/gateway/standins``, not Anthropic's service), which can
delay chosen requests.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

from .gwtools import anthropic_teacher, call_error, hf_teacher, request, serving
from .standins import anthropic_api
from .standins.server import Fault

KEY_ENV = "STANDIN_SERVER_API_KEY"
KEY = "sk-ant-standin-server-9d0c"
SERVICE = "omniopd.v1.TeacherGateway"


@pytest.fixture(scope="module")
def standin():
    server, state = anthropic_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture
def backend(standin, monkeypatch):
    server, state = standin
    state.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    return server, state


def claude(url: str, **fields):
    return anthropic_teacher(url, KEY_ENV, **fields)


# -- sampling -------------------------------------------------------------------------------------


async def test_sample_chunks_from_a_real_model():
    async with serving({"teachers": [hf_teacher(max_n=8, max_tokens=32)]}) as gw:
        reply = await gw.stub.SampleChunks(
            request("toy", partial="17 + 25 = ", n=3, max_tokens=8, seed=1, request_id="r-1")
        )
    assert reply.request_id == "r-1" and reply.teacher == "toy" and not reply.cached
    assert len(reply.chunks) == 3 and reply.continuation == "prefill"
    assert all(0 < c.output_tokens <= 8 for c in reply.chunks)
    assert all(c.finish_reason in ("stop", "length") for c in reply.chunks)
    assert reply.usage.output_tokens == sum(c.output_tokens for c in reply.chunks)
    assert reply.usage.input_tokens > 0
    assert not reply.HasField("error")


async def test_stream_replies_arrive_in_completion_order(backend):
    server, state = backend
    state.inject(Fault(delay=0.6))  # the first request to reach the backend is slow

    async def requests():
        yield request("claude", content="slow?", request_id="slow")
        await asyncio.sleep(0.2)
        yield request("claude", content="fast?", request_id="fast")

    async with serving({"teachers": [claude(server.url)]}) as gw:
        order = [r.request_id async for r in gw.stub.StreamChunks(requests())]
    assert order == ["fast", "slow"]


async def test_a_stream_carries_many_requests_at_once(backend):
    server, state = backend
    state.inject(*[Fault(delay=0.3)] * 40)
    async with serving({"teachers": [claude(server.url)]}) as gw:

        async def requests():
            for i in range(40):
                yield request("claude", content=f"question {i}?", request_id=str(i))

        started = time.monotonic()
        replies = [r async for r in gw.stub.StreamChunks(requests())]
        elapsed = time.monotonic() - started
    assert sorted(int(r.request_id) for r in replies) == list(range(40))
    assert all(r.chunks and not r.HasField("error") for r in replies)
    assert elapsed < 3.0  # 40 x 0.3 s one after the other would take 12 s


async def test_list_teachers(backend):
    server, _ = backend
    limits = {"requests_per_minute": 50, "input_tokens_per_minute": 40000, "max_concurrency": 4}
    config = {
        "teachers": [
            claude(
                server.url, model="claude-sonnet-4-6", continuation="instruction", limits=limits
            ),
            hf_teacher(max_n=8, max_tokens=32),
        ]
    }
    async with serving(config) as gw:
        reply = await gw.stub.ListTeachers(pb.ListTeachersRequest())
    by_name = {t.name: t for t in reply.teachers}
    c, toy = by_name["claude"], by_name["toy"]
    assert (c.provider, c.model, c.continuation) == (
        "anthropic",
        "claude-sonnet-4-6",
        "instruction",
    )
    assert not c.supports_continuation
    assert c.limits.requests_per_minute == 50 and c.limits.input_tokens_per_minute == 40000
    assert c.limits.max_concurrency == 4 and c.limits.output_tokens_per_minute == 0
    assert (toy.provider, toy.supports_continuation, toy.continuation) == ("hf", True, "")
    assert (toy.max_n, toy.max_tokens) == (8, 32)


# -- health, reflection, stop ---------------------------------------------------------------------


async def test_health_per_service_and_overall_then_not_serving_on_stop(backend):
    server, state = backend
    state.inject(Fault(delay=0.8))
    async with serving({"teachers": [claude(server.url)]}) as gw:
        health = health_pb2_grpc.HealthStub(gw.channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        err = await call_error(health.Check(health_pb2.HealthCheckRequest(service="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND

        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(gw.stub.SampleChunks(request("claude")))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(gw.server.stop(grace=5))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await in_flight  # the call under way finished within the grace period
        assert reply.chunks
        watch.cancel()
        await stopping
        err = await call_error(gw.stub.SampleChunks(request("claude", content="late?")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_reflection_makes_the_api_explorable(backend):
    server, _ = backend
    async with serving({"teachers": [claude(server.url)]}) as gw:
        sync_channel = grpc.insecure_channel(gw.address)
        try:
            db = ProtoReflectionDescriptorDatabase(sync_channel)
            services = await asyncio.to_thread(db.get_services)
            pool = descriptor_pool.DescriptorPool(db)
            message = await asyncio.to_thread(
                pool.FindMessageTypeByName, "omniopd.v1.SampleRequest"
            )
        finally:
            sync_channel.close()
    assert {SERVICE, "grpc.health.v1.Health"} <= set(services)
    fields = {f.name for f in message.fields}
    assert {"request_id", "teacher", "messages", "partial_answer", "n", "cache"} <= fields


# -- auth -----------------------------------------------------------------------------------------


async def test_bearer_token_required_when_configured_but_health_stays_open(backend):
    server, _ = backend
    async with serving({"teachers": [claude(server.url)]}, token="s3cret-gateway-token") as gw:
        for metadata in [
            None,
            (("authorization", "Bearer wrong"),),
            (("authorization", "s3cret-gateway-token"),),
        ]:
            err = await call_error(gw.stub.SampleChunks(request("claude"), metadata=metadata))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "s3cret" not in err.details()
        err = await call_error(gw.stub.ListTeachers(pb.ListTeachersRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

        async def one():
            yield request("claude")

        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in gw.stub.StreamChunks(one())]
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        good = (("authorization", "Bearer s3cret-gateway-token"),)
        reply = await gw.stub.SampleChunks(request("claude"), metadata=good)
        assert reply.chunks
        health = health_pb2_grpc.HealthStub(gw.channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING  # no token needed


# -- the command ----------------------------------------------------------------------------------


def start_cli(tmp_path, config: dict, *args: str, env: dict | None = None) -> subprocess.Popen:
    path = tmp_path / "teachers.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "omniopd.gateway", "--config", str(path), "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(seen)}")


def test_cli_serves_metrics_and_stops_gracefully_on_sigterm(tmp_path, backend):
    server, _ = backend
    prices = {"input_per_million": 1.0, "output_per_million": 5.0}
    config = {"teachers": [claude(server.url, prices=prices)]}
    proc = start_cli(tmp_path, config, "--metrics-port", "0", env={KEY_ENV: KEY})
    try:
        metrics_port = int(wait_for_line(proc, r"metrics on http://[\d.]+:(\d+)/metrics")[1])
        # uvloop is in the gateway extra, so the command serves on it by default
        serving_line = r"serving 1 teacher\(s\) on [\d.]+:(\d+) .*, uvloop event loop\)"
        port = int(wait_for_line(proc, serving_line)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.TeacherGatewayStub(channel).SampleChunks(request("claude"), timeout=10)
        assert reply.chunks
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        assert 'omniopd_gateway_requests_total{code="OK",teacher="claude"} 1.0' in text
        assert 'omniopd_gateway_cache_misses_total{teacher="claude"} 1.0' in text
        spend = re.search(r'omniopd_gateway_spend_usd_total\{teacher="claude"\} (\S+)', text)
        tokens = {
            d: float(re.search(rf'tokens_total{{direction="{d}",teacher="claude"}} (\S+)', text)[1])
            for d in ("input", "output")
        }
        assert tokens["input"] > 0 and tokens["output"] > 0
        assert float(spend[1]) == pytest.approx((tokens["input"] * 1 + tokens["output"] * 5) / 1e6)
        assert "omniopd_gateway_backend_latency_seconds_bucket" in text
        assert 'omniopd_gateway_continuation_fallbacks_total{teacher="claude"} 0.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_event_loop_choice(monkeypatch):
    import uvloop

    from omniopd.gateway.cli import loop_factory
    from omniopd.settings import SettingsError

    assert loop_factory("asyncio") is None  # asyncio's own loop
    assert loop_factory("auto") is loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory("auto") is None
    with pytest.raises(SettingsError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_cli_refuses_a_bad_config_naming_the_entry_and_field(tmp_path):
    config = {
        "teachers": [
            {
                "name": "haiku",
                "provider": "anthropic",
                "model": "m",
                "limits": {"requests_per_minute": 0},
            }
        ]
    }
    proc = start_cli(tmp_path, config)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "teachers[0] (name 'haiku') -> limits.requests_per_minute" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "value"), [("OMNIOPD_GATEWAY_GRACE_S", "soon"), ("REDIS_URL", "http://cache")]
)
def test_cli_refuses_a_bad_setting_naming_the_variable(tmp_path, variable, value):
    proc = start_cli(tmp_path, {"teachers": []}, env={variable: value})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"{variable}:" in err and "Traceback" not in err


def test_cli_refuses_a_teacher_that_cannot_start(tmp_path):
    teacher = {"name": "haiku", "provider": "anthropic", "model": "claude-haiku-4-5"}
    teacher["api_key_env"] = "OMNIOPD_TEST_UNSET_KEY"
    proc = start_cli(tmp_path, {"teachers": [teacher]})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "teacher 'haiku'" in err and "OMNIOPD_TEST_UNSET_KEY" in err
    assert "Traceback" not in err
