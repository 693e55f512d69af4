"""``omniopd-train`` SIGKILLed at random steps, resumed each time with ``--resume``, against an
uninterrupted run of the same config: the resumed run reaches its last step, and its per-step
loss equals the uninterrupted run's.

Real processes on loopback ports: one ``omniopd-gateway`` (the toy world's tiny teacher with
the ``hf`` provider, which honours a request's seed), one ``omniopd-verifier`` (lexical
similarity) and the trainer's own command, on the CPU in float32 with a fixed seed. The trainer
sends each fork's teacher request with a seed derived from the run's seed, the step and the
fork, and restores its RNGs (torch's for the student's sampling, the fork RNG for
``--fork-strategy random``, used here) from the checkpoint, so a resumed run sees exactly what
an uninterrupted one does.

The gateway caches replies by request, seed included, in memory. The two runs use two teacher
entries for the same model whose cache fingerprints differ (the second names its tokenizer),
so each run has a cache namespace of its own: the uninterrupted run's samples are all fresh
(checked), while the steps that the killed run redoes after a resume are answered from its
namespace's cache. Equal losses therefore show that fresh and cached samples agree, not that
one run read the other's.
"""

from __future__ import annotations

import random
import re

import pytest

from .kills import Service, Trainer, omniopd_argv, tiny_world, write_teachers

pytestmark = pytest.mark.slow

KILL_SEED = 20261129  # the kill steps are drawn from this; each is logged and recorded
SAVE_EVERY = 2  # a kill between checkpoints makes the resumed run redo steps
TOLERANCE = {"rel": 1e-6, "abs": 1e-9}
RESUMED = re.compile(r"resumed from \S+ \(step (\d+)\)")


def test_killed_and_resumed_run_matches_the_uninterrupted_one(
    tmp_path_factory, tmp_path, scale, ledger
):
    kills = scale.trainer_kills
    steps = 8 if kills == 1 else 6 * kills  # 8 bounded, 18 at full scale
    world = tiny_world(tmp_path_factory.getbasetemp() / "kills-world")
    teachers = write_teachers(tmp_path / "teachers.yaml", world, names=("toy", "toy-fresh"))
    gateway, verifier = Service.gateway(teachers), Service.verifier()
    rng = random.Random(KILL_SEED)
    processes: list = [gateway, verifier]
    segments = []  # per kill: (the step it was aimed at, steps logged when it died, resumed at)
    try:
        gateway.launch()
        verifier.launch()
        gateway.wait_ready()
        verifier.wait_ready()

        def argv(out, teacher):
            return [
                *omniopd_argv(
                    world,
                    out,
                    gateway=gateway.address,
                    verifier=verifier.address,
                    teacher=teacher,
                    steps=steps,
                    seed=7,
                ),
                *("--save-every", str(SAVE_EVERY), "--fork-strategy", "random"),
            ]

        # Both runs at once: their results do not depend on timing, only on their inputs.
        whole = Trainer(argv(tmp_path / "whole", "toy-fresh"), tmp_path / "whole")
        processes.append(whole)
        killed_argv = argv(tmp_path / "killed", "toy")
        run = Trainer(killed_argv, tmp_path / "killed")
        processes.append(run)
        logged = 0
        for i in range(kills):
            # Aim past a checkpoint and past what the file holds now (lines from before the
            # last resume included), leaving room for the kills to come and for the run not
            # to end first.
            lo, hi = max(logged + 1, SAVE_EVERY + 1), steps - 3 * (kills - i)
            assert lo <= hi, f"kill {i} landed too late ({logged} steps logged)"
            target = rng.randint(lo, hi)
            print(f"kill {i + 1} of {kills}: once step {target} is logged")
            run.wait_rows(lambda rows, t=target: bool(rows) and rows[-1]["step"] >= t, "step")
            logged = run.kill()
            assert run.proc.proc.returncode == -9 and logged < steps, run.output[-3000:]
            run = Trainer([*killed_argv, "--resume"], tmp_path / "killed")
            processes.append(run)
            m = run.proc.wait_for(RESUMED, timeout=180)
            segments.append((target, logged, int(m[1])))
        assert run.wait() == 0, run.output[-5000:]
        assert whole.wait() == 0, whole.output[-5000:]
    finally:
        for process in reversed(processes):
            process.stop()

    resumed, reference = run.rows(), whole.rows()
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    assert [r["step"] for r in reference] == list(range(1, steps + 1))
    for target, logged, resumed_at in segments:
        assert target <= logged < steps  # the kill landed at or just after its step
        assert 0 < resumed_at <= logged and resumed_at % SAVE_EVERY == 0
    # Every step did real work with the teacher and the verifier, in both runs.
    for r in resumed + reference:
        assert r["forks_scored"] > 0 and r["forks_failed"] == 0 and r["teacher_tokens"] > 0
    assert sum(r["teacher_cached"] for r in reference) == 0  # its own namespace: all fresh

    differences = []
    for a, b in zip(resumed, reference, strict=True):
        for key in ("loss", "pg_loss", "kl", "reward_mean", "grad_norm"):
            assert a[key] == pytest.approx(b[key], **TOLERANCE), (a["step"], key, a, b)
            if key == "loss":
                differences.append(abs(a[key] - b[key]))
        assert a["teacher_tokens"] == b["teacher_tokens"], a["step"]  # the same samples
    # A resume recovered when the run it started got past the step its kill had reached: the
    # next kill came later, or (the last resume) the run reached its final step.
    reached = [logged for _, logged, _ in segments[1:]] + [len(resumed)]
    recovered = sum(1 for (_, logged, _), r in zip(segments, reached, strict=True) if r > logged)
    assert recovered == kills
    redone = sum(logged - resumed_at for _, logged, resumed_at in segments)
    ledger.add(
        "trainer kills",
        requests=len(segments),  # --resume starts, one per kill
        faults_injected=len(segments),
        recovered=recovered,
        lost=steps - len({r["step"] for r in resumed}),  # steps missing from metrics.jsonl
        notes={
            "steps": steps,
            "kill_seed": KILL_SEED,
            "kills": [
                {"aimed_at": t, "logged_when_killed": g, "resumed_from": c} for t, g, c in segments
            ],
            "steps_redone": redone,
            "cached_teacher_replies_after_resumes": sum(r["teacher_cached"] for r in resumed),
            "max_abs_loss_difference": max(differences),
        },
    )
