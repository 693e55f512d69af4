"""The examples run as a user runs them, against the live gateway and verifier."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from .conftest import quiet_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=quiet_env(),
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trl_grpo_trains_the_toy_student_two_steps(stack, world, tmp_path):
    out = run_example(
        "trl_grpo.py",
        *("--gateway", stack.gateway, "--teacher", "toy", "--verifier", stack.verifier),
        *("--world", str(world.root), "--steps", "2", "--prompts", "16"),
        *("--batch-size", "4", "--num-generations", "2", "--teacher-samples", "2"),
        *("--max-completion-length", "32", "--output-dir", str(tmp_path / "run")),
    )
    assert out["steps"] == 2
    last = out["last"]
    assert 0 < last["rewards/omniopd/mean"] < 1
    assert math.isfinite(last["loss"])
    stats = out["reward_stats"]
    assert stats["calls"] == 2 and stats["completions"] == 8
    assert stats["unscored"] == 0 and stats["teacher_failures"] == 0
    assert stats["teacher_requests"] + stats["teacher_cache_hits"] == stats["prompts"] == 4


def test_verifier_from_a_plain_pytorch_loop(stack, world):
    out = run_example(
        "verifier_from_any_loop.py",
        *("--verifier", stack.verifier, "--world", str(world.root), "--steps", "2"),
        *("--batch-size", "2", "--samples", "3", "--teacher-samples", "2"),
        "--max-new-tokens",
        "32",
    )
    assert out["steps"] == 2
    for step in out["history"]:
        assert 0 < step["reward_mean"] < 1 and math.isfinite(step["loss"])
