"""A local OpenAI-compatible backend with a fixed latency, for the gateway benchmark.

It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``n`` choices of a short
fixed text) after a configurable delay, plus ``GET /v1/models``; ``GET /stats`` reports the
requests served and the most that were in flight at once (to check a gateway's concurrency
limit), ``POST /stats/reset`` clears them. It is a bare asyncio protocol over HTTP/1.1 with
keep-alive, so that it costs as little CPU as possible on a machine it shares with the gateway
and the client being measured; it is not a general HTTP server (no chunked request bodies).
``GET /stats/timeline`` gives, for each request since the last reset, when it arrived and when
it was answered (seconds after the reset), to see where a run's time went.

Run it in its own process::

    python bench/backends.py serve --delay-ms 50      # prints {"url": "http://127.0.0.1:PORT"}

or from a benchmark: ``with Backend(delay_s=0.05) as backend: ... backend.url ...``
(``backend.cpu_seconds()`` reads its CPU time). Run without a command (as ``make bench`` does),
it measures itself: how close to its delay it answers (8 requests in flight) and its own CPU
per request (64 in flight); the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

TEXT = " the sum of the units is twelve, so we carry one"
WORDS = TEXT.split(" ")


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reset_at = time.monotonic()
        self.arrived: list[float] = []  # seconds after the reset
        self.answered: list[float] = []

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


def _response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer to one chat or completions request: ``n`` choices of a fixed text."""
    n = int(body.get("n") or 1)
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    texts = [" ".join(WORDS[: max_tokens + 1]) + f" ({i})" for i in range(n)]
    finish = "length" if max_tokens < len(WORDS) - 1 else "stop"
    prompt = body.get("messages") or body.get("prompt") or ""
    usage = {
        "prompt_tokens": len(json.dumps(prompt)) // 4,
        "completion_tokens": n * min(max_tokens, len(WORDS) - 1),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if path.endswith("/chat/completions"):
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": finish,
                "logprobs": None,
            }
            for i, t in enumerate(texts)
        ]
        kind = "chat.completion"
    else:
        choices = [
            {"index": i, "text": t, "finish_reason": finish, "logprobs": None}
            for i, t in enumerate(texts)
        ]
        kind = "text_completion"
    return {
        "id": "bench",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": choices,
        "usage": usage,
    }


class BackendProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests, answer each after the delay, in order."""

    def __init__(self, delay_s: float, stats: Stats) -> None:
        self.delay_s = delay_s
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head[0].split(" ", 2)
            self.handle(method, path, body)

    def handle(self, method: str, path: str, raw: bytes) -> None:
        if method == "GET" and path == "/stats":
            self.send(_response(200, json.dumps(self.stats.as_dict()).encode()))
        elif method == "GET" and path == "/stats/timeline":
            times = {
                "reset_at": self.stats.reset_at,  # time.monotonic(): comparable across processes
                "arrived": self.stats.arrived,
                "answered": self.stats.answered,
            }
            self.send(_response(200, json.dumps(times).encode()))
        elif method == "POST" and path == "/stats/reset":
            self.stats.__init__()
            self.send(_response(200, b"{}"))
        elif method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": "bench", "object": "model", "created": 0}]}
            self.send(_response(200, json.dumps(data).encode()))
        elif method == "POST" and path.endswith(("/chat/completions", "/completions")):
            self.stats.requests += 1
            self.stats.arrived.append(time.monotonic() - self.stats.reset_at)
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            payload = _response(200, json.dumps(answer(path, json.loads(raw or b"{}"))).encode())
            loop = asyncio.get_running_loop()
            loop.call_later(self.delay_s, self.finish, payload)
        else:
            self.send(_response(404, b'{"error": {"message": "not found"}}'))

    def finish(self, payload: bytes) -> None:
        self.stats.in_flight -= 1
        self.send(payload)
        self.stats.answered.append(time.monotonic() - self.stats.reset_at)

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, delay_s: float) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BackendProtocol(delay_s, stats), host, port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"url": f"http://{host}:{bound}"}), flush=True)
    async with server:
        await server.serve_forever()


class Backend:
    """The backend in a child process (so its CPU is not the caller's)."""

    def __init__(self, delay_s: float = 0.05, host: str = "127.0.0.1") -> None:
        self.delay_s = delay_s
        self.host = host
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Backend:
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "serve",
                "--host",
                self.host,
                "--delay-ms",
                str(self.delay_s * 1000),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark backend did not start")
        self.url = json.loads(line)["url"]
        return self

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as reply:
            return json.loads(reply.read())

    def timeline(self) -> dict:
        """When each request since the last reset arrived and was answered (seconds after it,
        ``reset_at`` being the reset's ``time.monotonic()``, the same clock in every process)."""
        with urllib.request.urlopen(f"{self.url}/stats/timeline", timeout=5) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/stats/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the backend process has used so far (Linux ``/proc``)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _load(client: Any, requests: int, in_flight: int) -> list[float]:
    """Send ``requests`` chat calls, ``in_flight`` at a time; their latencies in seconds."""
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "n": 8}
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            started = time.perf_counter()
            await client.post("/chat/completions", body=body, cast_to=bytes)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(requests)))
    return sorted(latencies)


async def self_check(delay_s: float, requests: int) -> dict[str, float]:
    """How close to its delay the backend answers (8 in flight, as the latency benchmark runs),
    and its own CPU per request at 64 in flight (read from its process, not the client's)."""
    import openai

    with Backend(delay_s=delay_s) as backend:
        client = openai.AsyncOpenAI(
            api_key="EMPTY",
            base_url=f"{backend.url}/v1",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        await _load(client, 128, 64)  # open the connections
        latencies = await _load(client, requests // 4, 8)
        cpu_before, wall_before = backend.cpu_seconds(), time.perf_counter()
        await _load(client, requests, 64)
        wall = time.perf_counter() - wall_before
        cpu = backend.cpu_seconds() - cpu_before
        peak = backend.stats()["max_in_flight"]
        await client.close()
    return {
        "delay_ms": delay_s * 1000,
        "p50_ms_8_in_flight": latencies[len(latencies) // 2] * 1000,
        "p99_ms_8_in_flight": latencies[int(len(latencies) * 0.99)] * 1000,
        "requests_per_s_64_in_flight": requests / wall,
        "backend_cpu_ms_per_request": cpu / requests * 1000,
        "max_in_flight": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="run the backend (prints its URL as JSON)")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=0)
    serve_cmd.add_argument("--delay-ms", type=float, default=50.0)
    check = sub.add_parser("check", help="measure the backend itself (the default)")
    check.add_argument("--requests", type=int, default=4096)
    args = parser.parse_args()
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.host, args.port, args.delay_ms / 1000))
        return
    figures = asyncio.run(self_check(0.05, getattr(args, "requests", 4096)))
    print(f"{'benchmark backend, 50 ms delay':40} {'value':>10}")
    for name, value in figures.items():
        print(f"{name:40} {value:10.3f}")
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
