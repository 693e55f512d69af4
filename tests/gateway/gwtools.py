"""Helpers for the gateway core's tests: a real gateway on 127.0.0.1:0 and a client for it."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from omniopd.gateway.client import retry_info_s, status_from_call
from omniopd.gateway.config import parse_config
from omniopd.gateway.server import GatewayServer, create_server
from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc

QUESTION = "What is 17 + 25? Show your work."


@functools.cache
def toy_teacher_dir() -> Path:
    """A tiny randomly initialised teacher with a chat template, built once per test run."""
    from omniopd.toy import build_tiny

    out = Path(tempfile.mkdtemp(prefix="omniopd-gw-toy-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return Path(build_tiny(out).teacher)


@contextmanager
def transformers_serve(model_dir: Path, log_path: Path, timeout_s: float) -> Iterator[str]:
    """``transformers serve <model_dir>`` on 127.0.0.1 (port 0), offline, on the CPU: a real
    OpenAI-compatible server that nobody here wrote. Yields its base URL; stops it after."""
    command = [
        str(Path(sys.executable).with_name("transformers")),
        *("serve", str(model_dir), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"),
        *("--log-level", "info"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            text = log_path.read_text(errors="replace")
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", text):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"transformers serve did not start; its log ends:\n{text[-3000:]}"
                )
            time.sleep(0.2)
        yield found.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def hf_teacher(name: str = "toy", **fields: Any) -> dict[str, Any]:
    return {"name": name, "provider": "hf", "model": str(toy_teacher_dir()), **fields}


def anthropic_teacher(
    url: str, key_env: str, name: str = "claude", **fields: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "anthropic",
        "model": fields.pop("model", "claude-haiku-4-5"),
        "base_url": url,
        "api_key_env": key_env,
        **fields,
    }


def request(
    teacher: str, content: str = QUESTION, partial: str = "", n: int = 1, **fields: Any
) -> pb.SampleRequest:
    return pb.SampleRequest(
        teacher=teacher,
        messages=[pb.Message(role="user", content=content)],
        partial_answer=partial,
        n=n,
        **fields,
    )


@dataclass
class Running:
    server: GatewayServer
    port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.TeacherGatewayStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        value = self.server.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def backend_calls(self, teacher: str) -> float:
        return self.metric("omniopd_gateway_backend_calls_total", teacher=teacher)


@asynccontextmanager
async def serving(config: dict[str, Any], **options: Any) -> AsyncIterator[Running]:
    """A started gateway for ``config`` (a teachers.yaml mapping) and a channel to it."""
    server, port = await create_server(parse_config(config), "127.0.0.1:0", **options)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, port, channel, pb_grpc.TeacherGatewayStub(channel))
    finally:
        await channel.close()
        await server.stop(0.5)


async def call_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a call must end with (the test fails if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")


async def clear_of_window_edge(window_s: float = 60.0, margin_s: float = 5.0) -> None:
    """Wait, if need be, until the next rate window starts at least ``margin_s`` from now.

    The rate limits' sliding-window counter floors its weighted count, so calls that straddle a
    window boundary can be let one unit over the limit (``omniopd.gateway.limits`` says so). A
    test that expects a refusal after exactly the limit starts clear of the edge, so that its
    calls (a few seconds at most) fall in one window. Windows are aligned to the epoch.
    """
    left = window_s - time.time() % window_s
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


def retry_after_of(err: grpc.aio.AioRpcError) -> float | None:
    status = status_from_call(err)
    return None if status is None else retry_info_s(status)


async def gather_replies(stub: pb_grpc.TeacherGatewayStub, requests: list[pb.SampleRequest]):
    """Send ``requests`` on one stream; the replies in the order they came back."""

    async def source():
        for r in requests:
            yield r
            await asyncio.sleep(0)

    return [reply async for reply in stub.StreamChunks(source())]
