"""The pooled HTTP client of the OpenAI-protocol providers (``providers/http.py``).

Its servers here are the LOCAL STAND-IN of an OpenAI-compatible server written for this suite
(``tests/gateway/standins/openai_api.py``, under uvicorn as vLLM and SGLang are; not OpenAI or
vLLM) and, for the proxy tests, a few-line raw HTTP server standing in for a forward proxy.
What is checked: keep-alive connections are reused, dropped before the server drops them, and
never reused once the server has closed them; proxies are taken from the environment as the
SDK takes them; what the ``openai`` SDK would send is what is sent (:func:`sdk_identity`).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import uvicorn

from omniopd.gateway.providers import ErrorKind, ProviderError
from omniopd.gateway.providers.http import KEEPALIVE_S, JSONClient, sdk_identity

from .standins import openai_api

KEY = "sk-standin-http-5c1e07"
BODY = {"model": "qwen-teacher", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@contextlib.asynccontextmanager
async def client(base_url: str, **options):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    made = JSONClient(base_url, headers, where="standin", **options)
    await made.start()
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture(scope="module")
def standin():
    server, state = openai_api.start(api_key=KEY)
    yield server, state
    server.stop()


@pytest.fixture(scope="module")
def impatient():
    """A stand-in that closes idle connections after 0.2 s (uvicorn's default is 5 s)."""
    server, state = openai_api.start(api_key=KEY, timeout_keep_alive=0.2)
    yield server, state
    server.stop()


def test_idle_connections_are_dropped_before_uvicorn_drops_them():
    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_S


async def test_a_warm_connection_is_reused(standin):
    server, state = standin
    state.reset()
    async with client(f"{server.url}/v1") as http:
        for _ in range(3):
            answer = await http.post("/chat/completions", BODY, timeout=10)
            assert answer["choices"]
    assert len({r.peer for r in state.requests}) == 1


async def test_an_idle_connection_is_dropped_after_keepalive(standin):
    server, state = standin
    state.reset()
    async with client(f"{server.url}/v1", keepalive_s=0.2) as http:
        await http.post("/chat/completions", BODY, timeout=10)
        await asyncio.sleep(0.5)
        await http.post("/chat/completions", BODY, timeout=10)
    first, second = state.requests
    assert first.peer != second.peer


async def test_a_connection_the_server_closed_is_never_reused(impatient):
    server, state = impatient
    state.reset()
    async with client(f"{server.url}/v1") as http:  # keeps connections 4 s; the server 0.2 s
        for _ in range(3):
            answer = await http.post("/chat/completions", BODY, timeout=10)
            assert answer["choices"]
            await asyncio.sleep(0.5)
    assert len({r.peer for r in state.requests}) == 3


async def test_an_unencodable_body_fails_as_a_bad_request_without_a_call(standin):
    server, state = standin
    state.reset()
    async with client(f"{server.url}/v1") as http:
        with pytest.raises(ProviderError) as info:
            await http.post("/chat/completions", {**BODY, "top_k": float("nan")}, timeout=10)
    assert info.value.kind is ErrorKind.BAD_REQUEST and not info.value.retryable
    assert not state.requests


async def test_a_refused_connection_is_unavailable():
    async with client("http://127.0.0.1:1/v1") as http:
        with pytest.raises(ProviderError) as info:
            await http.post("/chat/completions", BODY, timeout=10)
    assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.retryable


# -- proxies ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def forward_proxy():
    """A raw HTTP server that records request lines and answers one fixed chat completion."""
    lines: list[str] = []
    answer = b'{"choices": [{"index": 0, "message": {"content": "4"}}]}'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        lines.append(head[0])
        length = next(
            int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", lines
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_requests_go_through_the_proxy_the_environment_names(monkeypatch, no_proxy_env):
    async with forward_proxy() as (proxy_url, lines):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with client("http://teacher.invalid/v1") as http:
            assert http.proxy == proxy_url
            answer = await http.post("/chat/completions", BODY, timeout=10)
    assert answer["choices"][0]["message"]["content"] == "4"
    assert lines == ["POST http://teacher.invalid/v1/chat/completions HTTP/1.1"]


async def test_no_proxy_keeps_a_host_off_the_proxy(monkeypatch, no_proxy_env, standin):
    server, state = standin
    state.reset()
    async with forward_proxy() as (proxy_url, lines):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        async with client(f"{server.url}/v1") as http:
            assert http.proxy is None
            await http.post("/chat/completions", BODY, timeout=10)
    assert not lines and len(state.requests) == 1


# -- identity -----------------------------------------------------------------------------------


async def test_sdk_identity_is_the_sdks_headers_less_its_telemetry(monkeypatch):
    import openai

    monkeypatch.setenv("OPENAI_ORG_ID", "org-standin")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-standin")
    sdk = openai.AsyncOpenAI(
        api_key=KEY, base_url="http://teacher.invalid/v1/", default_headers={"X-Team": "distill"}
    )
    try:
        base_url, headers = sdk_identity(sdk)
    finally:
        await sdk.close()
    assert base_url == "http://teacher.invalid/v1"
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["authorization"] == f"Bearer {KEY}"
    assert lower["openai-organization"] == "org-standin"
    assert lower["openai-project"] == "proj-standin"
    assert lower["x-team"] == "distill"
    assert lower["content-type"] == lower["accept"] == "application/json"
    assert lower["user-agent"].startswith("omniopd-gateway")
    assert not any(k.startswith("x-stainless") for k in lower)
