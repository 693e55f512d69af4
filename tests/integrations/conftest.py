"""A real gateway (the toy teacher) and a real verifier, on 127.0.0.1:0, for these tests.

The processes are the installed console scripts, as a user runs them. The gateway serves
``toy`` (the trained toy teacher, in-process ``hf``) and ``dead`` (an OpenAI-compatible backend
on a port where nothing listens, no retries: every request fails with UNAVAILABLE).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

BIN = Path(sys.executable).parent
GATEWAY_READY = re.compile(r"serving \d+ teacher\(s\) on [\d.]+:(\d+)")
METRICS_READY = re.compile(r"metrics on http://[\d.]+:(\d+)/metrics")
VERIFIER_READY = re.compile(r"verifier on http://[\d.]+:(\d+)")


def quiet_env() -> dict[str, str]:
    """Offline, one thread per process: the machine has two shared cores."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )


@dataclass
class Service:
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, args: list[str], log: Path) -> Service:
        with log.open("w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=quiet_env())
        return cls(proc, log)

    def wait_for(self, pattern: re.Pattern, timeout: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := pattern.search(self.log.read_text()):
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.proc.args[0]}: no {pattern.pattern!r}:\n{self.log.read_text()[-4000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass(frozen=True)
class Stack:
    gateway: str  # host:port
    gateway_metrics: str  # http://host:port/metrics
    verifier: str  # base URL


@pytest.fixture(scope="session")
def world():
    from omniopd.toy import ensure_toy_world

    return ensure_toy_world()  # `make test` builds it first (the `toy` target)


@pytest.fixture(scope="session")
def stack(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    config = {
        "teachers": [
            {"name": "toy", "provider": "hf", "model": str(world.teacher), "max_tokens": 64},
            {
                "name": "dead",
                "provider": "openai_completions",
                "model": "nothing",
                "base_url": "http://127.0.0.1:9/v1",
                "tokenizer": str(world.teacher),
                "max_retries": 0,
                "timeout_s": 2,
            },
        ]
    }
    (folder / "teachers.yaml").write_text(yaml.safe_dump(config))
    verifier = Service.start(
        [str(BIN / "omniopd-verifier"), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"],
        folder / "verifier.log",
    )
    gateway = Service.start(
        [
            str(BIN / "omniopd-gateway"),
            *("--config", str(folder / "teachers.yaml"), "--host", "127.0.0.1"),
            *("--port", "0", "--metrics-port", "0"),
        ],
        folder / "gateway.log",
    )
    try:
        port = gateway.wait_for(GATEWAY_READY).group(1)
        metrics = gateway.wait_for(METRICS_READY).group(1)
        url = f"http://127.0.0.1:{verifier.wait_for(VERIFIER_READY).group(1)}"
        deadline = time.monotonic() + 180
        while not _ready(url):
            if time.monotonic() > deadline or verifier.proc.poll() is not None:
                raise RuntimeError(f"verifier never ready:\n{verifier.log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield Stack(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics", url)
    finally:
        gateway.stop()
        verifier.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).is_success
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
