"""End to end on the toy world: real gateway (hf teacher) and verifier processes, real models.

The trainer runs as users run it: the ``omniopd-train`` command (a subprocess) or its
``main(argv)`` in this process. Models are the toy world's tiny random ones, so the numbers
mean nothing; what is checked is that every method runs, writes its metrics and checkpoints,
resumes, and fails where it should, saying why.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from omniopd.trainer.checkpoint import latest_checkpoint, list_checkpoints, weights_digest
from omniopd.trainer.cli import main
from omniopd.trainer.metrics import STEP_KEYS
from omniopd.trainer.services import ServiceUnreachable

from .stack import TINY_LIKELIHOOD, Process, omniopd_args, service_env, train_command

pytestmark = pytest.mark.slow


def small_eval_set(world) -> Path:
    """The first 8 held-out rows: evaluation runs for real, just on fewer problems."""
    path = world.root / "data" / "eval-8.jsonl"
    if not path.exists():
        path.write_text("".join(world.eval.read_text().splitlines(keepends=True)[:8]))
    return path


# The same tests check the GPU paths on a machine with one (CUDA training, bf16):
#   OMNIOPD_TEST_DEVICE=cuda OMNIOPD_TEST_DTYPE=bfloat16 pytest tests/trainer
# On the CPU (CI) they run in float32 as users run small models there.
DEVICE = os.environ.get("OMNIOPD_TEST_DEVICE", "cpu")
DTYPE = os.environ.get("OMNIOPD_TEST_DTYPE", "float32")
# Ranks of the torchrun test: one per GPU under nccl (a machine with one GPU runs one rank).
NPROC = int(os.environ.get("OMNIOPD_TEST_NPROC", "2"))


def common(world, out: Path, steps: int = 3) -> list[str]:
    return [
        "--device", DEVICE,
        "--dtype", DTYPE,
        "--student", str(world.student),
        "--dataset", str(world.train),
        "--eval-dataset", str(small_eval_set(world)),
        "--output-dir", str(out),
        "--steps", str(steps),
        "--batch-size", "4",
        "--max-new-tokens", "20",
        "--eval-every", "0",
        "--save-every", "2",
        "--lr", "1e-3",
    ]  # fmt: skip


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_run(out: Path, steps: int) -> list[dict]:
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for row in rows:
        assert set(STEP_KEYS) <= set(row), set(STEP_KEYS) - set(row)
        assert isinstance(row["loss"], float)
        for key in ("forks", "forks_failed", "teacher_tokens"):
            assert isinstance(row[key], int | float), key
        for key in ("time_rollout_s", "time_teacher_s", "time_verifier_s", "time_update_s"):
            assert row[key] >= 0, key
    final = latest_checkpoint(out)
    assert final is not None and final.name == f"step-{steps:07d}"
    model = AutoModelForCausalLM.from_pretrained(final / "model")  # any HF tool loads it
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    return rows


def test_omniopd_three_steps_then_resume(toy_world, gateway, verifier, tmp_path):
    out = tmp_path / "run"
    argv = common(toy_world, out) + omniopd_args(gateway, verifier)
    proc = Process.start(train_command(*argv), env=service_env())
    assert proc.proc.wait(timeout=300) == 0, proc.output[-5000:]
    rows = check_run(out, 3)
    assert sum(r["forks"] for r in rows) > 0
    assert sum(r["teacher_tokens"] for r in rows) > 0
    assert all(r["forks_failed"] == 0 and r["forks_unanimous"] >= 0 for r in rows)
    scored = [r for r in rows if r["forks_scored"]]
    assert scored and all(0 <= r["reward_mean"] <= 1 for r in scored)
    assert "config (saved to" in proc.output  # the resolved config is printed at start
    # The student moved: its weights differ from the initial ones.
    before = AutoModelForCausalLM.from_pretrained(toy_world.student).state_dict()
    after = AutoModelForCausalLM.from_pretrained(latest_checkpoint(out) / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # Resume to step 5 in this process: continues from step 3, nothing redone or lost.
    main([*argv, "--resume", "--steps", "5"])
    rows = check_run(out, 5)
    assert [c.name for c in list_checkpoints(out)] == ["step-0000004", "step-0000005"]


def test_likelihood_objective_three_steps_then_resume(toy_world, gateway, verifier, tmp_path):
    """The published objective: several audits per response, π̂ in [0, 1], KL on the rest."""
    out = tmp_path / "likelihood"
    argv = [
        *common(toy_world, out),
        *omniopd_args(gateway, verifier),
        *TINY_LIKELIHOOD,
    ]
    main(argv)
    rows = check_run(out, 3)
    assert sum(r["forks"] for r in rows) > 0 and sum(r["teacher_tokens"] for r in rows) > 0
    for r in rows:
        assert r["forks_failed"] == 0 and r["forks_scored"] == r["forks"]
        assert r["chunks_per_response"] <= 3 and 0 <= r["audited_fraction"] <= 1
        assert r["pg_loss"] is None and r["kl"] >= 0
        if r["forks_scored"]:
            assert 0 <= r["target_min"] <= r["target_mean"] <= r["target_max"] <= 1
            assert 0 <= r["k_mean"] <= 3 and 0 < r["prior_mean"] <= 1
    before = AutoModelForCausalLM.from_pretrained(toy_world.student).state_dict()
    after = AutoModelForCausalLM.from_pretrained(latest_checkpoint(out) / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = (out / "config.yaml").read_text()
    assert "objective: likelihood" in saved and "metric: edit" in saved  # TINY_LIKELIHOOD's

    # Resume to step 5: continues from step 3; with accumulation the update takes the other
    # path (forward after the scores), which must give the same kind of step; the decoder
    # layers recomputed in the backward pass (--gradient-checkpointing) change no contract.
    main([*argv, "--resume", "--steps", "5", "--grad-accum-steps", "2", "--gradient-checkpointing"])
    rows = check_run(out, 5)
    assert [c.name for c in list_checkpoints(out)] == ["step-0000004", "step-0000005"]
    assert all(r["forks_failed"] == 0 for r in rows)


def test_likelihood_with_both_extensions(toy_world, gateway, verifier, tmp_path):
    """--outcome-weight: the checker's reward enters the update (reward_mean reported);
    --mixed-weight: each scored chunk's consensus continuation is trained on off-policy (the
    verifier also scores the continuations against each other, so mixed_tokens > 0)."""
    out = tmp_path / "extensions"
    argv = [*common(toy_world, out, steps=2), *omniopd_args(gateway, verifier), *TINY_LIKELIHOOD]
    main([*argv, "--outcome-weight", "0.5", "--mixed-weight", "1"])
    rows = check_run(out, 2)
    assert all(0 <= r["reward_mean"] <= 1 for r in rows)
    assert all(r["forks_failed"] == 0 and r["forks_scored"] > 0 for r in rows)
    assert all(r["mixed_tokens"] > 0 and 0 < r["mixed_prob"] < 1 for r in rows)


@pytest.mark.parametrize("method", ["opd", "sft", "grpo"])
def test_baselines_three_steps_then_resume(method, toy_world, gateway, tmp_path):
    out = tmp_path / method
    extra = {
        "opd": ["--opd-teacher", str(toy_world.teacher)],
        "sft": ["--gateway", gateway, "--teacher", "toy"],
        "grpo": ["--grpo-samples", "3"],
    }[method]
    argv = [*common(toy_world, out), "--method", method, *extra, "--eval-every", "3"]
    main(argv)
    rows = check_run(out, 3)
    assert rows[-1]["eval_n"] == 8 and rows[-1]["eval_accuracy_greedy"] is not None
    if method == "sft":
        assert rows[0]["teacher_tokens"] > 0 and rows[0]["answers_failed"] == 0
        assert len((out / "sft_answers.rank0.jsonl").read_text().splitlines()) >= 4
    if method == "grpo":
        assert all(r["reward_mean"] is not None for r in rows)
    if method == "opd":
        assert all(r["opd_kl"] > 0 for r in rows)
    main([*argv, "--resume", "--steps", "4"])
    check_run(out, 4)


def test_sft_with_several_teacher_answers_per_prompt(toy_world, gateway, tmp_path):
    """--sft-answers 3: three teacher answers per prompt (one request, n = 3), all trained on,
    cached for resumes; a cache written with one answer per prompt reads as one."""
    from omniopd.trainer.baselines import AnswerCache

    out = tmp_path / "sft3"
    argv = [*common(toy_world, out, steps=2), "--method", "sft", "--gateway", gateway]
    main([*argv, "--teacher", "toy", "--sft-answers", "3"])
    rows = check_run(out, 2)
    assert all(r["answers_failed"] == 0 and r["teacher_tokens"] > 0 for r in rows)
    lines = [json.loads(x) for x in (out / "sft_answers.rank0.jsonl").read_text().splitlines()]
    assert lines and all(len(x["answers"]) == 3 for x in lines)

    # More answers per prompt than the teacher serves in one request: refused at start.
    with pytest.raises(ServiceUnreachable, match=r"sft_answers \(--sft-answers\) is 17"):
        main([*argv, "--teacher", "toy", "--sft-answers", "17", "--output-dir", str(out) + "x"])

    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"key": AnswerCache(old, "t").key("p"), "answer": "a"}) + "\n")
    assert AnswerCache(old, "t").get("p") == ["a"]
    assert AnswerCache(old, "t", per_prompt=2).get("p") is None  # fetched again, with 2


def test_bfloat16_keeps_float32_master_weights(toy_world, tmp_path):
    """--dtype bfloat16 computes in bf16 but keeps the student in float32: at a post-training
    learning rate most of an update is smaller than a bf16 weight's rounding step, so a pure
    bf16 student would barely move."""
    out = tmp_path / "bf16"
    argv = [*common(toy_world, out, steps=1), "--dtype", "bfloat16", "--lr", "1e-5"]
    main([*argv, "--method", "opd", "--opd-teacher", str(toy_world.teacher), "--beta", "0"])
    saved = AutoModelForCausalLM.from_pretrained(latest_checkpoint(out) / "model", dtype="auto")
    before = AutoModelForCausalLM.from_pretrained(toy_world.student).state_dict()
    after = saved.state_dict()
    assert all(t.dtype == torch.float32 for t in after.values())
    changed = lost = total = 0
    for name, w0 in before.items():
        delta = after[name] - w0
        changed += int((delta != 0).sum())
        # The same update applied to bf16 weights: how much of it rounding would erase.
        lost += int(((w0.bfloat16() + delta.bfloat16()) == w0.bfloat16())[delta != 0].sum())
        total += w0.numel()
    assert changed > total // 2
    assert lost > changed // 2


def test_all_forks_failed_takes_only_the_kl_term(toy_world, gateway, verifier, tmp_path, capfd):
    out = tmp_path / "dead"
    argv = common(toy_world, out, steps=2) + omniopd_args(gateway, verifier, teacher="dead")
    main([*argv, "--max-retries", "1", "--retry-backoff-s", "0.01", "--beta", "0.1"])
    rows = check_run(out, 2)
    for row in rows:
        assert row["forks"] > 0 and row["forks_failed"] == row["forks_audited"] > 0
        assert row["forks_scored"] == 0 and row["reward_mean"] is None
        assert row["pg_loss"] == 0 and row["loss"] == pytest.approx(0.1 * row["kl"])
        assert row["teacher_retries"] > 0  # UNAVAILABLE is retried (and counted) first
    logged = capfd.readouterr().err
    assert "no fork was scored" in logged and "KL term only" in logged


def test_likelihood_with_every_chunk_failed_takes_only_the_kl_term(
    toy_world, gateway, verifier, tmp_path
):
    out = tmp_path / "dead-likelihood"
    argv = common(toy_world, out, steps=2) + omniopd_args(gateway, verifier, teacher="dead")
    main([*argv, *TINY_LIKELIHOOD, "--max-retries", "0"])
    for row in check_run(out, 2):
        assert row["forks"] > 0 and row["forks_failed"] == row["forks"]
        assert row["forks_scored"] == 0 and row["target_mean"] is None
        assert row["chunk_loss"] == 0 and row["loss"] == pytest.approx(row["kl_loss"])


def test_unreachable_services_fail_fast_naming_the_url(toy_world, gateway, verifier, tmp_path):
    base = common(toy_world, tmp_path / "x", steps=1)
    with pytest.raises(SystemExit) as err:
        main(base + omniopd_args("127.0.0.1:1", verifier))
    assert "cannot reach the teacher gateway at 127.0.0.1:1 (--gateway)" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        main(base + omniopd_args(gateway, "http://127.0.0.1:1"))
    assert "cannot reach the verifier at http://127.0.0.1:1 (--verifier)" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        main(base + omniopd_args(gateway, verifier, teacher="nobody"))
    assert "no teacher 'nobody' (--teacher)" in str(err.value.code)
    assert "dead" in str(err.value.code) and "toy" in str(err.value.code)
    # A failed start leaves no I/O thread behind.
    assert not [t for t in threading.enumerate() if t.name == "io" and t.is_alive()]


def test_opd_with_another_tokenizer_fails_naming_both(toy_world, tmp_path):
    argv = common(toy_world, tmp_path / "x", steps=1)
    with pytest.raises(SystemExit) as err:
        main([*argv, "--method", "opd", "--opd-teacher", str(toy_world.teacher_char)])
    message = str(err.value.code)
    assert str(toy_world.student) in message and str(toy_world.teacher_char) in message


def test_bad_dataset_row_names_file_and_line(toy_world, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "Q: 1+2*3=?", "answer": "7"}\n{"prompt": \n')
    argv = common(toy_world, tmp_path / "x", steps=1)
    argv[argv.index("--dataset") + 1] = str(data)
    with pytest.raises(SystemExit, match=rf"{data}:2: not valid JSON"):
        main([*argv, "--method", "grpo"])


def test_kill_9_mid_run_then_resume_reaches_the_last_step(toy_world, gateway, verifier, tmp_path):
    out = tmp_path / "killed"
    argv = common(toy_world, out, steps=12) + omniopd_args(gateway, verifier)
    proc = Process.start(train_command(*argv), env=service_env())
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.proc.poll() is None, f"the run ended before it could be killed:\n{proc.output}"
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=30)
    done = len(read_metrics(out))
    assert done < 12, "the run was not killed mid-way"
    resumed_from = latest_checkpoint(out)
    assert resumed_from is not None and int(resumed_from.name.removeprefix("step-")) >= 2

    main([*argv, "--resume"])
    rows = check_run(out, 12)  # every step exactly once: redone steps replaced, none lost
    assert len(rows) == 12


def test_torchrun_two_ranks_keep_identical_weights(toy_world, gateway, verifier, tmp_path):
    out = tmp_path / "ddp"
    argv = common(toy_world, out, steps=2) + omniopd_args(gateway, verifier)
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        str(NPROC),
        "-m",
        "omniopd.trainer",
        *argv,
    ]
    proc = Process.start(command, env=service_env())
    assert proc.proc.wait(timeout=300) == 0, proc.output[-6000:]
    rows = check_run(out, 2)
    # Both ranks sampled their own prompts and forks: twice the forks of one rank of 4 prompts.
    assert all(r["forks"] > 0 for r in rows)
    final = latest_checkpoint(out)
    digests = [
        torch.load(final / f"rng-rank{r}.pt", weights_only=False)["weights_sha256"]
        for r in range(NPROC)
    ]
    assert len(set(digests)) == 1
    saved = AutoModelForCausalLM.from_pretrained(final / "model")
    assert weights_digest(saved) == digests[0]
    # ... and training moved them: not the initial weights.
    assert weights_digest(AutoModelForCausalLM.from_pretrained(toy_world.student)) != digests[0]


def test_sigterm_checkpoints_then_stops(toy_world, tmp_path):
    out = tmp_path / "term"
    argv = [*common(toy_world, out, steps=200), "--method", "grpo", "--save-every", "0"]
    proc = Process.start(train_command(*argv), env=service_env())
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=120) == 0, proc.output[-4000:]
    done = len(read_metrics(out))
    assert 2 <= done < 200
    assert latest_checkpoint(out).name == f"step-{done:07d}"  # the step it finished, saved
    assert json.loads((out / "summary.json").read_text())["stopped_by_signal"] is True
    assert "SIGTERM: checkpointing after this step" in proc.output


@pytest.mark.parametrize(
    "variant",
    [
        ["--baseline", "batch", "--fork-strategy", "random", "--normalize-advantages"],
        ["--ppo-epochs", "2", "--kl-estimator", "k3", "--grad-accum-steps", "2", "--beta", "0.1"],
    ],
    ids=["batch-random", "ppo-k3-accum"],
)
def test_omniopd_variants(variant, toy_world, gateway, verifier, tmp_path):
    out = tmp_path / "variant"
    main(common(toy_world, out, steps=2) + omniopd_args(gateway, verifier) + variant)
    rows = check_run(out, 2)
    assert all(r["forks_scored"] > 0 and r["forks_failed"] == 0 for r in rows)
    if "--ppo-epochs" in variant:
        assert all(r["clip_fraction"] is not None for r in rows)
        assert rows[-1]["lr"] == pytest.approx(1e-3)


def test_group_baseline_skips_unanimous_forks_before_the_teacher(
    toy_world, gateway, verifier, tmp_path
):
    """Near-greedy sampling makes every fork's drafts identical: ``group`` sends none of them
    to the teacher (no teacher tokens spent), ``batch`` still does."""
    argv = [*omniopd_args(gateway, verifier), "--temperature", "0.02"]
    main(common(toy_world, tmp_path / "group", steps=1) + argv)
    (row,) = read_metrics(tmp_path / "group")
    assert row["forks"] > 0 and row["forks_unanimous"] == row["forks"]
    assert row["forks_audited"] == 0 and row["teacher_tokens"] == 0
    main(common(toy_world, tmp_path / "batch", steps=1) + argv + ["--baseline", "batch"])
    (row,) = read_metrics(tmp_path / "batch")
    assert row["forks_unanimous"] == row["forks"] == row["forks_audited"] > 0
    assert row["teacher_tokens"] > 0


def test_update_does_not_depend_on_accumulation_or_overlap(toy_world, gateway, verifier, tmp_path):
    """One step with the drafts' forward overlapping the teacher (grad_accum_steps 1) and one
    split in 3 micro-batches after the scores: same seed, same samples (the gateway's cache
    returns the same teacher chunks), so the same weights."""
    weights, rows = [], []
    for accum in (1, 3):
        out = tmp_path / f"accum{accum}"
        args = common(toy_world, out, steps=1) + omniopd_args(gateway, verifier)
        main([*args, "--grad-accum-steps", str(accum), "--beta", "0.1", "--seed", "7"])
        rows.extend(read_metrics(out))
        weights.append(AutoModelForCausalLM.from_pretrained(latest_checkpoint(out) / "model"))
    assert rows[0]["forks_scored"] == rows[1]["forks_scored"] > 0
    assert rows[0]["reward_mean"] == rows[1]["reward_mean"]  # the same samples and scores
    # Adam's first step hides gradient magnitudes; the norm before clipping does not.
    for key in ("grad_norm", "pg_loss", "kl"):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-5, abs=1e-9), key
    for (name, a), b in zip(weights[0].named_parameters(), weights[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
