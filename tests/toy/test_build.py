"""``ensure_toy_world``: cached by recipe hash, atomic, and a copy for ``--out``.

These use a micro recipe (models of a few thousand parameters, a few steps) in a temporary
``OMNIOPD_HOME``: the real build and its bands are ``test_bands.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from omniopd.toy.build import cache_dir, copy_world, ensure_toy_world, run_workers
from omniopd.toy.recipe import ModelSpec, Recipe
from tests.proctools import assert_nothing_left, session_processes

MICRO = Recipe(
    n_train=128,
    n_val=8,
    n_eval=8,
    teacher=ModelSpec(32, 1, 2, 64, "bpe", steps=3, batch_size=8, warmup=1, seed=1),
    # Batches of teacher-char run as two micro-batches, through the worker's spec.
    teacher_char=ModelSpec(
        32, 1, 2, 64, "char", steps=3, batch_size=8, warmup=1, seed=2, micro_batches=2
    ),
    # Any val accuracy reaches 0: the student stops at its first check, step 2 of 5.
    student=ModelSpec(
        16,
        1,
        2,
        32,
        "bpe",
        steps=5,
        batch_size=8,
        warmup=1,
        seed=3,
        stop_at=0.0,
        check_every=2,
        check_from=2,
    ),
)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniopd-home")


@pytest.fixture(scope="module")
def micro_world(home):
    return ensure_toy_world(MICRO, home=home, workers=2)


def test_the_world_is_complete_and_described(micro_world, home):
    assert micro_world.root == home / "toy" / MICRO.hash()
    manifest = micro_world.manifest
    assert manifest["recipe_hash"] == MICRO.hash() and manifest["recipe"] == MICRO.to_dict()
    assert manifest["rows"] == {"train": 128, "val": 8, "eval": 8}
    for name in ("teacher", "student", "teacher_char"):
        model = manifest["models"][name]
        assert model["params"] > 0 and model["train"]["planned_steps"] == getattr(MICRO, name).steps
        assert 0.0 <= model["eval"]["accuracy_greedy"] <= 1.0
    assert manifest["models"]["teacher"]["train"]["steps"] == 3
    assert manifest["models"]["teacher"]["val_checks"] == []
    student = manifest["models"]["student"]
    assert student["train"]["steps"] == 2 and [c["step"] for c in student["val_checks"]] == [2]
    assert manifest["models"]["teacher_char"]["tokenizer"] == "char"
    for path in (micro_world.teacher, micro_world.student, micro_world.teacher_char):
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert manifest["models"]["teacher_char"]["spec"]["micro_batches"] == 2
    assert manifest["build_seconds"] > 0
    host = manifest["build_host"]
    assert host["cpu"] and host["torch_cpu_capability"]  # e.g. "AVX2", whose kernels made it
    assert not list((home / "toy").glob(".building-*"))


def test_a_cached_world_is_not_rebuilt(micro_world, home):
    stamp = (micro_world.root / "manifest.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_toy_world(MICRO, home=home)
    assert again == micro_world and time.perf_counter() - start < 1.0
    assert (micro_world.root / "manifest.json").stat().st_mtime_ns == stamp


def test_the_hash_follows_the_recipe():
    assert Recipe().hash() == Recipe().hash()
    assert replace(MICRO, data_seed=5).hash() != MICRO.hash()
    assert replace(MICRO, student=replace(MICRO.student, steps=4)).hash() != MICRO.hash()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tokenizer", "wordpiece", "tokenizer must be one of ('bpe', 'char'), got 'wordpiece'"),
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("steps", -1, "steps must be >= 0, got -1"),
        ("lr", 0.0, "lr must be > 0, got 0.0"),
        ("stop_at", 1.5, "stop_at must be in [0, 1], got 1.5"),
    ],
)
def test_model_specs_are_checked(field, value, message):
    with pytest.raises(ValueError) as err:
        replace(MICRO.teacher, **{field: value})
    assert str(err.value) == message


def test_a_failed_build_leaves_nothing_behind(home):
    # 3 heads cannot split a width of 32: the worker's model constructor raises.
    bad = replace(MICRO, teacher=replace(MICRO.teacher, heads=3))
    with pytest.raises(ValueError, match=r"(?s)recipe.teacher: .*not a multiple of .* heads \(3\)"):
        ensure_toy_world(bad, home=home, workers=1)
    assert not cache_dir(bad, home).exists()
    assert not list((home / "toy").glob(f".building-{bad.hash()}-*"))


def test_a_killed_build_never_looks_complete(tmp_path):
    recipe = replace(MICRO, data_seed=77)
    code = (
        "import sys; from pathlib import Path; from tests.toy.test_build import MICRO;"
        "from dataclasses import replace; from omniopd.toy.build import ensure_toy_world;"
        "ensure_toy_world(replace(MICRO, data_seed=77), home=Path(sys.argv[1]), workers=1)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "toy").glob(".building-*/data/eval.jsonl")):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and its workers, mid-build
        proc.wait()
    root = cache_dir(recipe, tmp_path)
    assert not root.exists()
    world = ensure_toy_world(recipe, home=tmp_path, workers=1)  # cleans up and builds
    assert world.root == root and world.manifest["recipe_hash"] == recipe.hash()
    assert not list((tmp_path / "toy").glob(".building-*"))


def test_sigterm_stops_the_build_and_its_workers(tmp_path):
    """``omniopd-toy build`` terminated mid-build (as `make test` does when its set-up fails)
    kills its workers and leaves no unfinished folder."""
    env = {**os.environ, "OMNIOPD_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniopd.toy.cli", "build", "--workers", "2"],
        env=env,
        start_new_session=True,  # the session's id is the builder's pid
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(session_processes(proc.pid)) < 3:  # the builder and its two workers
            assert proc.poll() is None, "the build ended before it could be stopped"
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert_nothing_left(proc.pid, "the build")
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever failed, nothing outlives it
            os.killpg(proc.pid, signal.SIGKILL)
    assert not list((tmp_path / "toy").glob(".building-*"))


def test_a_failing_worker_stops_the_others(tmp_path):
    started = time.monotonic()
    commands = {
        "slow": [sys.executable, "-c", "import time; time.sleep(120)"],
        "ok": [sys.executable, "-c", "print('log line'); print('{\"a\": 1}')"],
        "bad": [sys.executable, "-c", "import sys; sys.exit(3)"],
    }
    assert run_workers({"ok": commands["ok"]}, workers=1, threads=1) == {"ok": {"a": 1}}
    with pytest.raises(RuntimeError, match=r"building bad failed \(exit status 3\)"):
        run_workers(commands, workers=3, threads=1)
    assert time.monotonic() - started < 60  # "slow" was killed, not waited for


def test_a_worker_that_prints_much_is_not_blocked():
    """A child's stdout goes to a file: 1 MB before its report, more than a pipe holds, must
    not block it (the builder reads the report only after the child exits)."""
    loud = [sys.executable, "-c", "print('x' * 1_000_000); print('{\"a\": 1}')"]
    reports: list[dict] = []
    runner = threading.Thread(
        target=lambda: reports.append(run_workers({"loud": loud}, workers=1, threads=1)),
        daemon=True,
    )
    runner.start()
    runner.join(timeout=60)
    assert reports == [{"loud": {"a": 1}}], "the worker was blocked writing its output"


def test_a_finished_worker_hands_its_threads_to_one_still_running():
    """The builder rewrites a running worker's threads file when another ends: "long" waits
    until it reads 2 (1 of its own, 1 from "short") and reports what it read."""
    wait_for_two = (
        "import json, sys, time; from pathlib import Path; f = Path(sys.argv[-1]); "
        "end = time.monotonic() + 30\n"
        "while f.read_text() != '2' and time.monotonic() < end: time.sleep(0.05)\n"
        "print(json.dumps({'threads': int(f.read_text())}))"
    )
    commands = {
        "long": [sys.executable, "-c", wait_for_two],
        "short": [sys.executable, "-c", "print('{\"threads\": 0}')"],
    }
    reports = run_workers(commands, workers=2, threads=1)
    assert reports == {"long": {"threads": 2}, "short": {"threads": 0}}


def test_a_worker_keeps_offered_threads_only_if_its_steps_get_faster(tmp_path):
    """ThreadShare on a fake clock: the offer is taken after a full window of steps, kept when
    the steps get 10 % faster, given back (and never tried again) when they do not."""
    import torch

    from omniopd.toy.worker import ThreadShare

    before = torch.get_num_threads()
    offer = tmp_path / "threads"
    offer.write_text("2")
    try:
        for trial_step, kept in ((0.5, 2), (0.95, 1)):
            torch.set_num_threads(1)
            now = [0.0]
            share = ThreadShare(offer, window=4, clock=lambda now=now: now[0])
            step = 1.0
            for done in range(1, 17):
                now[0] += step
                share(done)
                if torch.get_num_threads() == 2:
                    step = trial_step
            assert torch.get_num_threads() == kept
            assert share.refused == (None if kept == 2 else 2)
    finally:
        torch.set_num_threads(before)


def test_copy_world(micro_world, tmp_path):
    out = copy_world(micro_world, tmp_path / "copy")
    assert out.manifest == micro_world.manifest and out.teacher.joinpath("config.json").is_file()
    assert copy_world(micro_world, out.root) == out  # same recipe: left as it is
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty"):
        copy_world(micro_world, busy)


def all_readable(root: Path) -> bool:
    """Every folder 0755 and every file 0644: a container's uid 1000 can load the models."""
    items = [root, *root.rglob("*")]
    return all((p.stat().st_mode & 0o777) == (0o755 if p.is_dir() else 0o644) for p in items)


def test_built_and_copied_worlds_are_readable_by_everyone(micro_world, tmp_path):
    """safetensors writes its file 0600; a world folder must not keep that mode."""
    from omniopd.toy.world import build_tiny

    assert all_readable(micro_world.root)
    assert all_readable(build_tiny(tmp_path / "tiny").root)
    (micro_world.teacher / "model.safetensors").chmod(0o600)  # a cache from before the fix
    try:
        assert all_readable(copy_world(micro_world, tmp_path / "copy").root)
    finally:
        (micro_world.teacher / "model.safetensors").chmod(0o644)
