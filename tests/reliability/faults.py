"""Shared by the provider-fault and Redis-restart tests: faults planned per request id at a
local stand-in, and a private ``redis-server`` a test can SIGKILL and start again.

The stand-ins (``tests/gateway/standins``) are LOCAL servers written for this suite that speak
the Anthropic and OpenAI wire formats; they are not those services.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable

import redis

from omniopd.processes import free_port
from tests.gateway.standins.server import Fault, StandIn

# Request ids look like ``rq-<tag>-00042``; a test puts the id in the prompt, so it reaches the
# backend inside whatever body the provider builds (chat messages or a rendered raw prompt).
RID = re.compile(r"\brq-[0-9a-z]+-\d{5}\b")


def request_id(tag: str, i: int) -> str:
    return f"rq-{tag}-{i:05d}"


class FaultPlan:
    """Which fault each request meets at a stand-in, attempt by attempt, and what it did meet.

    Installed as the stand-in's fault queue (:func:`install`). The stand-in's ``receive()`` logs a
    request and takes the next fault with no ``await`` in between, so while a fault is taken the
    last logged request is the one being answered: its request id (found in its body) and the
    number of times that id arrived before choose the fault. Concurrent requests therefore meet
    exactly their own plan whatever order they arrive in.
    """

    def __init__(self, state: StandIn) -> None:
        self._state = state
        self._lock = threading.Lock()
        self.planned: dict[str, tuple[Fault, ...]] = {}
        self.attempts: Counter[str] = Counter()  # backend calls that arrived, per request id
        self.injected: Counter[str] = Counter()  # faults the stand-in applied, per request id
        self.unplanned = 0  # backend calls that carried no request id of this plan

    def plan(self, rid: str, faults: Iterable[Fault]) -> None:
        self.planned[rid] = tuple(faults)

    # -- the stand-in's side: ``if state.faults: state.faults.popleft()`` ----------------------

    def __bool__(self) -> bool:
        return True

    def popleft(self) -> Fault | None:
        body = self._state.requests[-1].body
        found = RID.search(json.dumps(body, ensure_ascii=False))
        with self._lock:
            if found is None or found.group() not in self.planned:
                self.unplanned += 1
                return None
            rid = found.group()
            attempt = self.attempts[rid]
            self.attempts[rid] += 1
            faults = self.planned[rid]
            if attempt >= len(faults):
                return None
            self.injected[rid] += 1
            return faults[attempt]

    # -- what the test reads afterwards -------------------------------------------------------

    @property
    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.attempts.values()) + self.unplanned


def install(state: StandIn) -> FaultPlan:
    """Replace the stand-in's fault queue by a per-request-id :class:`FaultPlan`."""
    plan = FaultPlan(state)
    state.faults = plan  # type: ignore[assignment]
    return plan


# -- a private Redis ------------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of the test's own on 127.0.0.1, no persistence: a restart is empty.

    ``kill()`` sends SIGKILL (no shutdown, no goodbye to clients); ``start()`` again serves on the
    same port, so clients configured with :attr:`url` can find it again.
    """

    def __init__(self, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = port or free_port("127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 30.0) -> PrivateRedis:
        if not os.path.exists(self.binary):
            raise RuntimeError(f"{self.binary} is missing: install redis-server (apt redis-server)")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        deadline = time.monotonic() + timeout
        while True:  # the port may linger a moment after a kill: try until it binds
            self.proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
            if self._wait_ready(deadline):
                self.starts += 1
                return self
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start: {err}")
            time.sleep(0.1)

    def _wait_ready(self, deadline: float) -> bool:
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
