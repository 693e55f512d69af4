"""``experiments/toy_distill.py`` for two steps per arm on the tiny toy world (random models),
with a real stack: every arm runs, the learning-rate sweep picks per arm, the outputs are
written where they are asked for (never into the repository's docs/), and a rerun of the same
command trains nothing. The accuracies mean nothing here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "toy_distill.py"
ARMS = [
    "student", "sft", "sft-matched", "grpo", "opd", "omniopd", "omniopd-char", "omniopd-uniform-prior",
    "omniopd-lexical", "omniopd-hybrid", "omniopd-random-forks", "omniopd-alpha0.5",
    "omniopd-alpha8", "omniopd-logratio", "omniopd-batch-baseline", "omniopd-likelihood",
    "omniopd-likelihood-rouge1", "omniopd-likelihood-embedding", "omniopd-outcome",
    "omniopd-mixed",
]  # fmt: skip
TEACHER_ARMS = [a for a in ARMS if a.startswith(("sft", "omniopd"))]
# Smaller drafts for speed; chunk sizes and teacher samples are what the published objective's
# arms pin (the experiment refuses them after --), so every arm keeps its own.
TINY_TRAINER = [
    "--num-drafts", "3",
    "--fork-quantile", "0.5",
    "--min-fork-entropy", "0",
]  # fmt: skip


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def docs_state() -> dict[str, float]:
    """The repository's results files and their modification times (none before the full run)."""
    paths = [REPO / "docs" / "results.md", *sorted((REPO / "docs" / "results").glob("*"))]
    return {str(p): p.stat().st_mtime for p in paths if p.exists()}


def test_every_arm_runs_two_steps_and_a_rerun_only_finishes_what_is_missing(tmp_path):
    from omniopd.toy import build_tiny

    world = build_tiny(tmp_path / "tiny")
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    common = [
        "--world", str(world.root),
        "--runs-dir", str(runs),
        "--docs", str(docs),
        "--steps", "2",
        "--batch-size", "4",
        "--evals", "2",
        "--max-new-tokens", "16",
    ]  # fmt: skip
    before = docs_state()

    # Every arm, two steps, one learning rate and one seed: every arm's code path runs.
    done = run([*common, "--lrs", "1e-3", "--seeds", "0", "--arms", "all", "--", *TINY_TRAINER])
    assert done.returncode == 0, done.stderr[-5000:]
    assert docs_state() == before, "the experiment wrote into the repository's docs/"
    summary = json.loads((docs / "results" / "summary.json").read_text())["worlds"]["arith"]
    assert list(summary["arms"]) == ARMS
    for name, arm in summary["arms"].items():
        for key in ("mean", "std", "seeds", "teacher_tokens", "repetition_rate", "wall_s"):
            assert key in arm, (name, key)
        assert 0 <= arm["mean"] <= 1 and arm["std"] == 0 and arm["seeds"] == [0], name
        if name == "student":
            continue
        assert arm["complete"] and arm["lr"] == 1e-3 and arm["steps"] == 2, name
        assert arm["command"].startswith("omniopd-train --method "), name
        assert [[p["step"] for p in c["points"]] for c in arm["curves"]] == [[1, 2]], name
        assert (arm["teacher_tokens"] > 0) == (name in TEACHER_ARMS), name
    assert "--teacher toy-char" in summary["arms"]["omniopd-char"]["command"]
    assert "--metric lexical" in summary["arms"]["omniopd-lexical"]["command"]
    assert "--chunk-tokens 8" in summary["arms"]["omniopd-likelihood"]["command"]
    assert summary["budget"]["trainer_flags"] == TINY_TRAINER
    assert summary["budget"]["lr_schedule"] == "linear"
    # SFT matched to the named arm's teacher tokens: k answers per prompt, k their ratio
    matched, sft, named = (summary["arms"][a] for a in ("sft-matched", "sft", "omniopd-mixed"))
    k = matched["answers_per_prompt"]
    assert k == max(1, round(named["teacher_tokens"] / sft["teacher_tokens"])) and k > 1
    assert f"--sft-answers {k}" in matched["command"]
    assert "--lr-schedule linear" in matched["command"]
    page = (docs / "results.md").read_text()
    assert page.index("## Goals") < page.index("## The arith world")
    assert page.index("Verdicts on the goals") < page.index("### arith: how to reproduce")
    for name in ARMS:
        assert f"| `{name}`" in page, name
    assert "(= `omniopd-drafts`)" in page and f"(k = {k})" in page
    for png in ("accuracy_vs_updates", "accuracy_vs_teacher_tokens", "lr_sweep"):
        path = docs / "results" / "arith" / f"{png}.png"
        assert path.read_bytes().startswith(b"\x89PNG"), png
    assert (
        len(list(runs.glob("arith/*/*/result.json"))) == len(ARMS) - 1
    )  # every trained arm, saved as it finished

    # A sweep over two learning rates and a second seed (one arm without services, to stay
    # fast), two runs at a time in processes of their own: the run above is reused, the sweep
    # picks a rate on val, the seed runs at it.
    sweep = [*common, "--lrs", "1e-3", "3e-3", "--seeds", "0", "1", "--arms", "opd"]
    done = run([*sweep, "--jobs", "2", "--", *TINY_TRAINER])
    assert done.returncode == 0, done.stderr[-5000:]
    assert "3 training runs (1 already finished)" in done.stderr
    opd = json.loads((docs / "results" / "summary.json").read_text())["worlds"]["arith"]
    opd = opd["arms"]["opd"]
    assert set(opd["lr_sweep"]) == {"0.001", "0.003"} and opd["lr"] in (1e-3, 3e-3)
    assert opd["seeds"] == [0, 1] and len(opd["accuracy_per_seed"]) == 2
    results = sorted(runs.glob("arith/opd/*/result.json"))
    assert len(results) == 3

    # A run killed after its last checkpoint, before its result was saved: the same command
    # finishes it by resuming (nothing left to train) and leaves every finished run alone.
    lost = next(p for p in results if "seed1" in p.parent.name)
    saved = json.loads(lost.read_text())
    lost.unlink()
    stamps = {p: p.stat().st_mtime for p in results if p != lost}
    done = run([*sweep, "--", *TINY_TRAINER])
    assert done.returncode == 0, done.stderr[-5000:]
    assert "3 training runs (2 already finished)" in done.stderr
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert json.loads(lost.read_text())["final"] == saved["final"]

    # The same run trained from nothing in this process gives what the child process gave:
    # --jobs changes when runs train, not what they learn.
    shutil.rmtree(lost.parent)
    done = run([*sweep, "--", *TINY_TRAINER])
    assert done.returncode == 0, done.stderr[-5000:]
    again = json.loads(lost.read_text())

    def learned(result: dict) -> dict:
        return {k: v for k, v in result["final"].items() if k != "seconds"}

    assert learned(again) == learned(saved) and again["curve"] == saved["curve"]
    assert (lost.parent / "train.log").read_text().count("INFO") > 0


def test_a_flag_that_arms_differ_in_cannot_be_set_for_all(tmp_path):
    done = run(["--runs-dir", str(tmp_path), "--docs", str(tmp_path), "--", "--metric", "hybrid"])
    assert done.returncode != 0
    assert "--metric after --" in done.stderr


def test_the_chain_world_runs_through_the_experiment(tmp_path):
    """``--world`` takes a chain world (here a tiny one): its answers' length limit comes from
    the world (128 tokens) unless given, and the published objective's arms, its extensions and
    the baselines run on it. Fewer arms than above: their code paths are the same."""
    from omniopd.toy import build_tiny
    from omniopd.toy.recipe import TINY_CHAIN

    world = build_tiny(tmp_path / "tiny-chain", TINY_CHAIN)
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    arms = ["student", "sft", "opd", "omniopd-likelihood", "omniopd-outcome", "omniopd-mixed"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "page.md").write_text("Both worlds were run for this test.")
    (notes / "chain.md").write_text("The chain world's numbers mean nothing here.")
    args = [
        *("--world", str(world.root), "--runs-dir", str(runs), "--docs", str(docs)),
        *("--notes", str(notes / "{world}.md")),
        *("--steps", "2", "--batch-size", "4", "--evals", "2", "--lrs", "1e-3"),
        *("--seeds", "0", "--eval-limit", "16", "--val-limit", "16", "--arms", *arms),
    ]
    done = run(args)
    assert done.returncode == 0, done.stderr[-5000:]
    page = json.loads((docs / "results" / "summary.json").read_text())
    summary = page["worlds"]["chain"]
    assert list(summary["arms"]) == arms
    assert summary["budget"]["max_new_tokens"] == 128
    for name in arms[1:]:
        assert summary["arms"][name]["complete"], name
    command = summary["arms"]["omniopd-likelihood"]["command"]  # chunks sized for the world
    assert "--chunk-tokens 16" in command and "--chunks-per-response 4" in command

    # Another world's entry (here a copy of this one) is kept when this world's is rewritten,
    # and the page has a section for each, the chain world first.
    page["worlds"]["arith"] = {**summary, "recipe": "another"}
    (docs / "results" / "summary.json").write_text(json.dumps(page))
    again = run(args)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "(0 already finished)" not in again.stderr
    page = json.loads((docs / "results" / "summary.json").read_text())
    assert page["worlds"]["arith"]["recipe"] == "another"
    assert page["worlds"]["chain"]["arms"] == summary["arms"]
    text = (docs / "results.md").read_text()
    assert text.index("## Where the runs stand") < text.index("## The chain world")
    assert text.index("## The chain world") < text.index("## The arith world")
    assert "Both worlds were run for this test." in text
    assert "The chain world's numbers mean nothing here." in text
    for png in ("accuracy_vs_updates", "accuracy_vs_teacher_tokens"):
        assert (docs / "results" / "chain" / f"{png}.png").is_file()
