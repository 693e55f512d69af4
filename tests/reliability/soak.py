"""The load driver of the soaks: closed-loop asyncio clients against services in their own
processes, client-side latencies, and the servers' resident memory read with psutil.

Every process under load is a child of the test (the gateway, the verifier, and the local
OpenAI-wire-format stand-in the gateway calls), so the driver shares neither their CPU time nor
their GIL, and each one's resident set is its own.

A soak runs in two phases with a quiet point between them and after them: ``clients`` loops
each send one request at a time for ``warmup_s``, then every client finishes the request it
has in flight and waits; at that quiet point the server's RSS and metrics are read; then the
clients run again for ``soak_s`` and stop the same way. With nothing in flight at either
point, the metrics' differences belong to the measured requests exactly.

The stand-in (``python -m tests.reliability.soak standin``) is the suite's OpenAI-compatible
stand-in (``tests/gateway/standins``: a LOCAL server speaking the Chat Completions wire format,
not OpenAI) with every request delayed by a fixed time, and ``GET /soak/stats`` giving the
completion requests it has received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.trainer.stack import Process, service_env

REPO = Path(__file__).resolve().parents[2]
MB = 2**20

# One request of one client: ``call(client, i, measured)``; it raises on any failure, including
# an answer that is well-formed but not what the soak expects (a hit that should be a miss).
Call = Callable[[int, int, bool], Awaitable[None]]


class WrongReply(Exception):
    """A reply that arrived but is not the one expected."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank (``q`` in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


@dataclass
class Phase:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class SoakResult:
    name: str
    clients: int
    warmup: Phase
    measured: Phase
    rss_mb_start: float  # at the quiet point after the warm-up
    rss_mb_end: float  # at the quiet point after the soak
    rss_mb_peak: float  # the highest of the samples taken every half second during the soak
    # Metrics (or any other reading) at both quiet points: what ``probe`` returned.
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    def change(self, name: str, **labels: str) -> float:
        """How much metric ``name`` (summed over the series matching ``labels``) moved."""
        return total(self.after, name, **labels) - total(self.before, name, **labels)

    @property
    def errors(self) -> int:
        return sum(self.measured.errors.values())

    @property
    def p50_ms(self) -> float:
        return percentile(self.measured.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.measured.latencies_ms, 99)

    @property
    def rps(self) -> float:
        return self.measured.requests / self.measured.seconds

    @property
    def rss_growth(self) -> float:
        return (self.rss_mb_end - self.rss_mb_start) / self.rss_mb_start

    def record(self, ledger: Any, **extra: Any) -> None:
        """This soak's ledger entry (tests/reliability/conftest.py), ``extra`` in its notes."""
        n = self.measured.requests
        ledger.add(
            "soak",
            requests=n,
            soak_p99_ms=self.p99_ms,
            soak_rss_growth=self.rss_growth,
            notes=self.notes(requests=n, **extra),
        )

    def notes(self, **extra: Any) -> dict[str, Any]:
        """What report.py reads (name, clients, seconds, errors, p50_ms) and the rest."""
        return {
            "name": self.name,
            "clients": self.clients,
            "seconds": round(self.measured.seconds, 2),
            "errors": self.errors,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "mean_ms": round(statistics.fmean(self.measured.latencies_ms), 2),
            "max_ms": round(max(self.measured.latencies_ms), 2),
            "rps": round(self.rps, 1),
            "rss_mb_start": round(self.rss_mb_start, 1),
            "rss_mb_end": round(self.rss_mb_end, 1),
            "rss_mb_peak": round(self.rss_mb_peak, 1),
            "warmup_requests": self.warmup.requests,
            "warmup_seconds": round(self.warmup.seconds, 2),
            "warmup_errors": sum(self.warmup.errors.values()),
            **extra,
        }

    def summary(self) -> str:
        return json.dumps(self.notes(requests=self.measured.requests), sort_keys=True)


async def run_soak(
    name: str,
    call: Call,
    *,
    pid: int,
    clients: int,
    warmup_s: float,
    soak_s: float,
    probe: Callable[[], dict[str, float]] = dict,
) -> SoakResult:
    """Drive ``call`` from ``clients`` closed loops: warm-up, quiet point, soak, quiet point.

    ``pid`` is the server whose RSS is read; ``probe`` (run at both quiet points, in a thread)
    reads whatever the caller will compare, such as the server's metrics.
    """
    warmup, measured = Phase(), Phase()
    loop = asyncio.get_running_loop()
    arrived = 0
    all_quiet = asyncio.Event()
    go = asyncio.Event()
    stop_at = 0.0

    async def one(client: int, i: int, phase: Phase) -> None:
        started = time.perf_counter()
        try:
            await call(client, i, phase is measured)
        except Exception as err:  # every failure is counted, by kind; none is dropped
            phase.errors[error_kind(err)] += 1
        else:
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)
        phase.requests += 1

    async def client(c: int) -> None:
        nonlocal arrived
        i = 0
        while loop.time() < warmup_until:
            await one(c, i, warmup)
            i += 1
        arrived += 1
        if arrived == clients:
            all_quiet.set()
        await go.wait()
        while loop.time() < stop_at:
            await one(c, i, measured)
            i += 1

    warmup.started = time.perf_counter()
    warmup_until = loop.time() + warmup_s
    tasks = [asyncio.create_task(client(c)) for c in range(clients)]
    await all_quiet.wait()
    warmup.ended = time.perf_counter()
    rss_start = rss_mb(pid)
    before = await asyncio.to_thread(probe)
    peak = rss_start

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            await asyncio.sleep(0.5)
            peak = max(peak, rss_mb(pid))

    sampler = asyncio.create_task(sample_rss())
    measured.started = time.perf_counter()
    stop_at = loop.time() + soak_s
    go.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        sampler.cancel()
    measured.ended = time.perf_counter()
    rss_end = rss_mb(pid)
    after = await asyncio.to_thread(probe)
    return SoakResult(
        name,
        clients,
        warmup,
        measured,
        rss_start,
        rss_end,
        max(peak, rss_end),
        before,
        after,
    )


def error_kind(err: BaseException) -> str:
    """A short, countable name for a failure: the gRPC code, the HTTP status, or the type."""
    code = getattr(err, "code", None)
    if callable(code):
        try:
            return f"grpc {code().name}"
        except Exception:
            pass
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return f"http {status}"
    return type(err).__name__


# --- the services, each in its own process ---------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """A Prometheus ``/metrics`` page as ``{'name{label="v",...}': value}``."""
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def total(snapshot: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the series of ``name`` in a :func:`scrape` whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in snapshot.items()
        if key.partition("{")[0] == name and all(w in key for w in wanted)
    )


def clean_env(**extra: str) -> dict[str, str]:
    """One thread each, offline, and none of a developer's service settings (no Redis, no
    token): these soaks measure the services' embedded defaults."""
    env = service_env(**extra)
    for name in list(env):
        if name == "REDIS_URL" or name.startswith(("OMNIOPD_GATEWAY_", "OMNIOPD_VERIFIER_")):
            env.pop(name)
    env.update(extra)
    return env


def script(name: str) -> str:
    """An installed entry point of this environment (``omniopd-gateway``, ...)."""
    return str(Path(sys.executable).with_name(name))


def start_standin(delay_ms: float, api_key_env: str, env: dict[str, str]) -> tuple[Process, str]:
    """The delayed stand-in in its own process: ``(process, base URL)``."""
    command = [sys.executable, "-m", "tests.reliability.soak", "standin"]
    command += ["--delay-ms", str(delay_ms), "--api-key-env", api_key_env]
    # ``tests`` is a namespace package found from the repository's root.
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
    proc = Process.start(command, env=env)
    url = json.loads(proc.wait_for(re.compile(r'^\{"url".*\}$', re.M), timeout=60)[0])["url"]
    return proc, url


def standin_calls(url: str) -> int:
    with urllib.request.urlopen(f"{url}/soak/stats", timeout=30) as answer:
        return int(json.loads(answer.read())["requests"])


def start_gateway(config_path: Path, env: dict[str, str]) -> tuple[Process, int, str]:
    """``omniopd-gateway`` on 127.0.0.1:0 with metrics: ``(process, gRPC port, metrics URL)``."""
    command = [script("omniopd-gateway"), "--config", str(config_path)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    proc = Process.start(command, env=env)
    metrics = proc.wait_for(re.compile(r"metrics on (http://\S+/metrics)"), timeout=120)[1]
    port = int(proc.wait_for(re.compile(r"serving \d+ teacher\(s\) on [\d.]+:(\d+)"), 120)[1])
    return proc, port, metrics


def start_verifier(env: dict[str, str]) -> tuple[Process, str]:
    """``omniopd-verifier`` on 127.0.0.1:0 (CPU, the packaged all-MiniLM-L6-v2), once ready."""
    command = [script("omniopd-verifier"), "--host", "127.0.0.1", "--port", "0"]
    command += ["--device", "cpu"]
    proc = Process.start(command, env=env)
    url = proc.wait_for(re.compile(r"verifier on (http://[\d.]+:\d+)"), timeout=180)[1]
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise RuntimeError(f"the verifier never became ready:\n{proc.output[-4000:]}")
        time.sleep(0.2)


# --- the stand-in process --------------------------------------------------------------------


class Delayed:
    """ASGI middleware: every POST waits ``delay_s`` before the app sees it, and is counted.

    ``GET /soak/stats`` answers ``{"requests": N}``. The wrapped stand-in logs each request it
    receives; that log is cleared as it grows, so a long soak does not fill the stand-in's
    memory (its own RSS is not what the soaks measure, but it shares the machine).
    """

    def __init__(self, app: Any, state: Any, delay_s: float) -> None:
        self.app = app
        self.state = state
        self.delay_s = delay_s
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/soak/stats":
            body = json.dumps({"requests": self.requests}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            self.requests += 1
            if len(self.state.requests) > 1000:
                self.state.requests.clear()
            await asyncio.sleep(self.delay_s)
        await self.app(scope, receive, send)


def serve_standin(argv: list[str] | None = None) -> None:
    from tests.gateway.standins import openai_api
    from tests.gateway.standins.server import ServerThread, StandIn

    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak standin")
    p.add_argument("--delay-ms", type=float, default=50.0)
    p.add_argument("--api-key-env", required=True)
    args = p.parse_args(argv)
    state = StandIn(api_key=os.environ[args.api_key_env])
    app = Delayed(openai_api.build_app(state), state, args.delay_ms / 1000)
    # uvicorn's default backlog (2048) and no connection limit: 64 gateway connections fit.
    server = ServerThread(app).start()  # type: ignore[arg-type]
    print(json.dumps({"url": server.url}), flush=True)
    threading.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    if sys.argv[1:2] == ["standin"]:
        serve_standin(sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.reliability.soak standin --delay-ms 50 --api-key-env X")
