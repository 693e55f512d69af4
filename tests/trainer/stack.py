"""Processes for the trainer's end-to-end tests (the services themselves: ``omniopd.stack``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

# A small OmniOPD step for tests on the tiny toy world: 3 drafts of 4 tokens, 3 teacher samples
# per fork, at most 2 forks per response, lexical similarity (no embedding model to load).
TINY_OMNIOPD = [
    "--num-drafts", "3",
    "--chunk-tokens", "4",
    "--teacher-samples", "3",
    "--fork-quantile", "0.5",
    "--min-fork-entropy", "0",
    "--chunks-per-response", "2",
    "--metric", "lexical",
]  # fmt: skip


# The published objective on the tiny world's short answers: chunks of 3 tokens, at most 3 per
# response, 3 teacher samples each, edit similarity (after the TINY_OMNIOPD flags, which it
# overrides where both set a value).
TINY_LIKELIHOOD = [
    "--objective", "likelihood",
    "--chunk-tokens", "3",
    "--chunks-per-response", "3",
    "--teacher-samples", "3",
    "--metric", "edit",
]  # fmt: skip


def omniopd_args(gateway: str, verifier: str, teacher: str = "toy") -> list[str]:
    """``omniopd-train`` flags for the method against these services, with :data:`TINY_OMNIOPD`."""
    return [
        "--method", "omniopd",
        "--gateway", gateway,
        "--teacher", teacher,
        "--verifier", verifier,
        *TINY_OMNIOPD,
    ]  # fmt: skip


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


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "omniopd.trainer", *args]
