"""Real gateway and verifier processes on 127.0.0.1:0 for the trainer's end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

BIN = Path(sys.executable).parent
GATEWAY_READY = re.compile(r"serving \d+ teacher\(s\) on [\d.]+:(\d+)")
VERIFIER_READY = re.compile(r"verifier on http://[\d.]+:(\d+)")


def service_env(**extra: str) -> dict[str, str]:
    """Offline, one thread each: the machine has two cores for everything."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


@dataclass
class Process:
    """A child process whose combined output is read (and kept) on a thread."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], env: dict[str, str] | None = None) -> Process:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or service_env(),
        )
        out = cls(proc)
        threading.Thread(target=out._read, daemon=True).start()
        return out

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := pattern.search(line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.proc.args[0]} did not print {pattern.pattern!r} within {timeout} s"
            f" (exit {self.proc.poll()}):\n{self.output[-4000:]}"
        )

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(config: dict, folder: Path) -> tuple[Process, str]:
    """``omniopd-gateway`` with ``config`` (a teachers.yaml mapping); returns (process, host:port)."""
    path = folder / "teachers.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = Process.start(
        [str(BIN / "omniopd-gateway"), "--config", str(path), "--host", "127.0.0.1", "--port", "0"]
    )
    port = proc.wait_for(GATEWAY_READY, timeout=120).group(1)
    return proc, f"127.0.0.1:{port}"


@dataclass
class Verifier:
    proc: Process

    def wait_ready(self, timeout: float = 180) -> str:
        """The verifier's URL, once it has printed its port and /readyz answers 200."""
        url = f"http://127.0.0.1:{self.proc.wait_for(VERIFIER_READY, timeout).group(1)}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).is_success:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the verifier at {url} never became ready:\n{self.proc.output[-4000:]}")

    def stop(self) -> None:
        self.proc.stop()


def start_verifier() -> Verifier:
    """``omniopd-verifier`` on port 0 (all-MiniLM-L6-v2 on CPU), not yet waited for."""
    return Verifier(
        Process.start(
            [str(BIN / "omniopd-verifier"), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"]
        )
    )


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "omniopd.trainer", *args]
