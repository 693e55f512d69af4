"""Shared by the kill tests: a gateway and a verifier that a test SIGKILLs and starts again on
the same port, the tiny toy world they serve, and ``omniopd-train`` runs as child processes.

Everything is real: ``omniopd-gateway`` with the ``hf`` provider on the toy world's teacher,
``omniopd-verifier`` on the CPU, and the trainer's own command (``python -m omniopd.trainer``),
each a child process on a loopback port.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from omniopd.probe import grpc_ready, http_ready
from omniopd.processes import console_script, free_port
from omniopd.toy.world import ToyWorld, build_tiny
from tests.trainer.stack import Process, omniopd_args, service_env, train_command

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # a loaded two-core machine can take a minute to import torch
RUN_TIMEOUT_S = 600.0


def tiny_world(root: Path) -> ToyWorld:
    """The toy world's tiny random models and data at ``root``, built once (seconds)."""
    if (root / "manifest.json").is_file():
        return ToyWorld.at(root)
    return build_tiny(root)


def write_teachers(path: Path, world: ToyWorld, names: tuple[str, ...] = ("toy",)) -> Path:
    """A ``teachers.yaml`` serving the toy teacher under each of ``names``.

    Entries after the first name the tokenizer explicitly (the same files the model has): the
    teacher samples the same way, but its cache fingerprint differs, so each name has a cache
    namespace of its own in one gateway.
    """
    teachers = []
    for i, name in enumerate(names):
        entry = {
            "name": name,
            "provider": "hf",
            "model": str(world.teacher),
            "max_tokens": 64,
            "device": "cpu",
        }
        if i:
            entry["tokenizer"] = str(world.teacher)
        teachers.append(entry)
    path.write_text(yaml.safe_dump({"teachers": teachers}))
    return path


class Service:
    """One service on a port of its own that survives it: :meth:`kill` SIGKILLs the process,
    :meth:`start` starts it again on the same port and waits for its health check."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        self.port = free_port(HOST)
        self.proc: Process | None = None
        self.starts = 0
        self.kills = 0

    @classmethod
    def gateway(cls, teachers: Path) -> Service:
        command = console_script("omniopd-gateway", "omniopd.gateway.cli")
        return cls("gateway", [*command, "--config", str(teachers), "--grace", "0"])

    @classmethod
    def verifier(cls) -> Service:
        command = console_script("omniopd-verifier", "omniopd.verifier.cli")
        return cls("verifier", [*command, "--device", "cpu"])

    @property
    def address(self) -> str:
        """``host:port`` for ``--gateway``, or the base URL for ``--verifier``."""
        hostport = f"{HOST}:{self.port}"
        return hostport if self.name == "gateway" else f"http://{hostport}"

    def ready(self, *, model: bool = True) -> bool:
        """Health check: gRPC health for the gateway; the verifier's ``/readyz`` (its model
        loaded), or with ``model=False`` its ``/healthz`` (serving; lexical scoring needs no
        model)."""
        if self.name == "gateway":
            return grpc_ready(self.address, timeout_s=2.0)[0]
        path = "/readyz" if model else "/healthz"
        return http_ready(f"{self.address}{path}", timeout_s=2.0)[0]

    def launch(self) -> None:
        args = [*self.command, "--host", HOST, "--port", str(self.port)]
        self.proc = Process.start(args, env=service_env())
        self.starts += 1

    def wait_ready(self, *, model: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while not self.ready(model=model):
            if self.proc.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} on port {self.port} did not become ready (exit"
                    f" {self.proc.proc.poll()}):\n{self.proc.output[-4000:]}"
                )
            time.sleep(0.05)

    def start(self, *, model: bool = True) -> None:
        self.launch()
        self.wait_ready(model=model)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; sockets close as the kernel reaps the process."""
        assert self.proc is not None and self.proc.proc.poll() is None, f"{self.name} is not up"
        os.kill(self.proc.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Trainer:
    """One ``omniopd-train`` process, its output kept, its ``metrics.jsonl`` read as it grows."""

    def __init__(self, argv: list[str], output_dir: Path) -> None:
        self.argv = argv
        self.output_dir = output_dir
        self.proc = Process.start(train_command(*argv), env=service_env())

    @property
    def metrics(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def rows(self) -> list[dict]:
        """The complete lines of ``metrics.jsonl`` so far (a line cut by a kill is skipped)."""
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def running(self) -> bool:
        return self.proc.proc.poll() is None

    def wait_rows(self, predicate, what: str, timeout_s: float = RUN_TIMEOUT_S) -> list[dict]:
        """Poll until ``predicate(rows)`` holds while the run is alive; the rows then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.rows()
            if predicate(rows):
                return rows
            if not self.running():
                raise AssertionError(
                    f"the trainer exited ({self.proc.proc.poll()}) before {what};"
                    f" {len(rows)} steps logged:\n{self.proc.output[-5000:]}"
                )
            time.sleep(0.01)
        raise AssertionError(f"no {what} within {timeout_s:.0f} s:\n{self.proc.output[-5000:]}")

    def kill(self) -> int:
        """SIGKILL the run; the number of steps it had logged when it died."""
        os.kill(self.proc.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(timeout=30)
        return len(self.rows())

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.proc.kill()
            raise

    @property
    def output(self) -> str:
        return self.proc.output

    def stop(self) -> None:
        self.proc.stop()


def omniopd_argv(
    world: ToyWorld,
    out: Path,
    *,
    gateway: str,
    verifier: str,
    teacher: str = "toy",
    steps: int,
    seed: int = 0,
) -> list[str]:
    """A small OmniOPD run on the CPU: 4 prompts a step, 3 drafts of 4 tokens, 3 teacher
    samples per fork, at most 2 forks per response, lexical similarity."""
    return [
        "--device", "cpu",
        "--dtype", "float32",
        "--student", str(world.student),
        "--dataset", str(world.train),
        "--output-dir", str(out),
        "--steps", str(steps),
        "--seed", str(seed),
        "--batch-size", "4",
        "--max-new-tokens", "20",
        "--eval-every", "0",
        "--lr", "1e-3",
        *omniopd_args(gateway, verifier, teacher),
    ]  # fmt: skip


RETRY_LINE = re.compile(
    r"(?P<what>teacher stream|verifier call) failed \((?P<why>.*)\).* retry (?P<n>\d+) of"
    r" (?P<max>\d+) in (?P<delay>[\d.]+) s"
)


def retry_lines(output: str) -> list[re.Match[str]]:
    """The trainer's log lines announcing a retry of a service call, in order."""
    return [m for line in output.splitlines() if (m := RETRY_LINE.search(line))]


def kill_steps(seed: int, kills: int, steps: int) -> list[int]:
    """``kills`` distinct steps in [1, steps - 2], in order, drawn from a seeded RNG: the run
    is killed once it has logged each (and before its last step, so every kill lands mid-run)."""
    return sorted(random.Random(seed).sample(range(1, steps - 1), kills))
