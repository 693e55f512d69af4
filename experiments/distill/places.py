"""Where the world, the runs and the results are; the stack the runs talk to."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.arms import ANSWER_TOKENS, OFFLINE, ONE_THREAD, TEACHER, TEACHER_CHAR, TEACHER_MAX_N

# -- paths and places -----------------------------------------------------------------------


@dataclass
class Places:
    """The world, the rows evaluated on, and where runs and results go."""

    world: Any  # omniopd.toy.ToyWorld
    recipe: str  # the world's recipe hash: runs of another world never mix with these
    runs: Path
    docs: Path
    eval_rows: Path
    val_rows: Path

    @property
    def results(self) -> Path:
        return self.docs / "results"

    @property
    def world_name(self) -> str:
        """``arith`` or ``chain``: the task the world was built for."""
        return self.world.manifest["recipe"].get("world", "arith")

    def show(self, value: str) -> str:
        """A path as the results page writes it: $W for the world, $RUNS for the runs folder."""
        for prefix, name in ((self.world.root, "$W"), (self.runs, "$RUNS")):
            text = str(prefix)
            if value == text or value.startswith(text + os.sep):
                return name + value[len(text) :]
        return value


def limited_copy(source: Path, limit: int | None, folder: Path) -> Path:
    """``source``, or a copy of its first ``limit`` rows (the same copy every time)."""
    if limit is None:
        return source
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.stem}-{limit}.jsonl"
    text = "".join(source.read_text().splitlines(keepends=True)[:limit])
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def digest(value: Any, n: int = 10) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def write_json(path: Path, value: Any) -> None:
    """Written whole or not at all: a kill never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def say(message: str) -> None:
    print(f"toy_distill: {message}", file=sys.stderr, flush=True)


# -- the services ---------------------------------------------------------------------------


class Services:
    """The stack, started the first time a run needs it (a rerun with nothing left to train
    starts nothing), and stopped on the way out. No Redis: one gateway needs none."""

    def __init__(self, places: Places) -> None:
        self.places = places
        self.stack: Any = None
        self.start_s: float | None = None

    def teachers_config(self) -> dict[str, Any]:
        w = self.places.world
        # A whole answer fits max_tokens (SFT reads whole answers; the chain world's run to
        # 124 tokens), with room for teacher-char's longer spelling of a chunk.
        max_tokens = 2 * ANSWER_TOKENS[self.places.world_name]
        common = {
            "provider": "hf", "device": "cpu", "max_n": TEACHER_MAX_N, "max_tokens": max_tokens,
        }  # fmt: skip
        return {
            "teachers": [
                {"name": TEACHER, "model": str(w.teacher), **common},
                {"name": TEACHER_CHAR, "model": str(w.teacher_char), **common},
            ],
            # The reply cache off (entries expire at once): arms with the same seed start from
            # the same rollouts, and a shared cache would hand later arms the earlier arms'
            # teacher samples, for free. Each arm samples, and pays for, its own.
            "cache": {"max_entries": 1, "ttl_s": 0.001},
        }

    def dead(self) -> str | None:
        """Why a service of the running stack has stopped, if one has."""
        child = self.stack.dead() if self.stack is not None else None
        return None if child is None else f"{child.name} {child.exit_reason()}"

    def up(self) -> tuple[str, str]:
        from omniopd.stack import Stack, StackConfig

        if (reason := self.dead()) is not None:
            say(f"{reason}: restarting the stack (logs in {self.places.runs / 'stack'})")
            self.stop()
        if self.stack is None:
            folder = self.places.runs / "stack"
            folder.mkdir(parents=True, exist_ok=True)
            teachers = folder / "teachers.yaml"
            teachers.write_text(yaml.safe_dump(self.teachers_config(), sort_keys=False))
            config = StackConfig(
                teachers=teachers,
                redis=False,
                verifier_device="cpu",
                env={**ONE_THREAD, **OFFLINE},
                log_dir=folder / "logs",
            )
            say(f"starting the gateway and the verifier (logs in {folder / 'logs'})")
            start = time.monotonic()
            self.stack = Stack(config)
            try:
                self.stack.start()
            except BaseException:
                self.stack = None
                raise
            self.start_s = time.monotonic() - start
            say(
                f"stack up in {self.start_s:.0f} s: gateway {self.stack.gateway}, "
                f"verifier {self.stack.verifier}"
            )
        self.stack.check()
        return self.stack.gateway, self.stack.verifier

    def stop(self) -> None:
        if self.stack is not None:
            say("stopping the stack")
            self.stack.stop()
            self.stack = None
