"""``python -m omniopd.demo`` end to end on a tiny budget: the tiny toy world (random models),
a real stack, two training steps. The numbers mean nothing here; the run, the table, the final
JSON line, the plot and a clean stop (also on Ctrl-C) are what is checked.

Each demo runs in a session of its own, so "nothing left behind" is checked by listing the
processes of that session after the demo has exited: the trainer, the gateway, the verifier and
Redis each run in their own process group but stay in the demo's session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.proctools import assert_nothing_left
from tests.trainer.stack import TINY_OMNIOPD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from omniopd.toy import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


def demo_command(world, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "omniopd.demo",
        "--world", str(world.root),
        "--output-dir", str(out),
        "--steps", str(steps),
        "--batch-size", "4",
        "--eval-limit", "8",
        "--eval-every", "1",
        "--max-new-tokens", "16",
        "--no-redis",
        "--", *TINY_OMNIOPD,
    ]  # fmt: skip


def test_a_short_demo_prints_the_table_and_the_json_line_last(tiny_world, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        demo_command(tiny_world, out, steps=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-5000:]

    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("accuracy_before", "accuracy_after", "teacher_accuracy"):
        assert 0 <= result[key] <= 1, key
    assert result["teacher_tokens"] > 0 and result["wall_s"] > 0
    table = "\n".join(lines[:-1])
    for row in (
        "student before",
        "student after",
        "teacher (reference)",
        "teacher tokens used",
        "wall time",
    ):
        assert row in table
    assert f"metrics: {out / 'run' / 'metrics.jsonl'}" in table
    assert f"plot:    {out / 'demo.png'}" in table
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "demo.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "demo.json").read_text()) == result

    # Progress went to stderr, and the services were stopped on the way out.
    assert "[4/5] omniopd-train" in stderr and "[5/5] stopping the stack" in stderr
    # start_new_session: the session's id is the demo's pid
    assert_nothing_left(proc.pid, "the demo")


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_while_training_stops_the_trainer_and_every_service(tiny_world, tmp_path, presses):
    """Ctrl-C (SIGINT to the demo, as a terminal sends it) once the trainer runs: the demo
    stops the trainer (it saves first) and the services in order; pressed again while that
    runs, it kills whatever still runs at once. Either way it exits with 130, prints no
    result, and leaves no process behind."""
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        demo_command(tiny_world, out, steps=100_000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stderr: list[str] = []
    training, stopping = threading.Event(), threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if "omniopd.trainer: eval at step 1:" in line:
                training.set()
            if "demo: stopping the trainer" in line:
                stopping.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Once it has made a step (the tiny run evaluates after each): then it has something
        # to save.
        assert training.wait(300), "the trainer made no step:\n" + "".join(stderr)[-5000:]
        os.kill(proc.pid, signal.SIGINT)
        if presses == 2:
            # Again as soon as the demo says it is stopping the trainer (which takes a while:
            # the trainer finishes its step and saves a checkpoint).
            assert stopping.wait(60), "".join(stderr)[-5000:]
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)  # the reader thread alone reads stderr, to its end
    assert proc.stdout is not None
    stdout = proc.stdout.read()  # a few lines at most: the pipe cannot have filled
    text = "".join(stderr)
    assert proc.returncode == 130, text[-5000:]
    assert stdout == ""  # no table and no JSON line for a run that did not finish
    assert "stopping the trainer" in text
    if presses == 1:
        assert "[5/5] stopping the stack" in text
        assert "interrupted; the services are stopped" in text
        # The trainer stopped on its own terms: a checkpoint of the last step it finished.
        assert list((out / "run" / "checkpoints").glob("step-*"))
    else:
        assert "SIGINT again: killing the trainer and the services now" in text
    assert_nothing_left(proc.pid, "the demo")
