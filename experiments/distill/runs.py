"""One training run: its command, its folder, its training and its result."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distill.arms import (
    ARM_NAMES,
    ARMS,
    EVAL_BATCH,
    NAMED_ARM,
    RESULT,
    TEACHER_MAX_N,
    Arm,
    Budget,
    sized_for,
)
from distill.places import Places, Services, digest, read_json, write_json

# -- one training run -----------------------------------------------------------------------

GATEWAY, VERIFIER = "$GATEWAY", "$VERIFIER"


@dataclass(frozen=True)
class RunSpec:
    arm: Arm
    lr: float
    seed: int
    steps: int
    eval_every: int
    save_every: int
    sweep: bool  # its final model is evaluated on val (the learning-rate choice)

    def argv(self, places: Places, budget: Budget, gateway: str, verifier: str) -> list[str]:
        """``omniopd-train``'s arguments, without ``--output-dir`` and ``--resume``."""
        w, arm = places.world, self.arm
        assert arm.method is not None
        argv = [
            "--method", arm.method,
            "--student", str(w.student),
            "--dataset", str(w.train),
            "--eval-dataset", str(places.eval_rows),
            "--steps", str(self.steps),
            "--batch-size", str(budget.batch_size),
            "--lr", f"{self.lr:g}",
            "--lr-schedule", budget.lr_schedule,
            "--seed", str(self.seed),
            "--max-new-tokens", str(budget.max_new_tokens),
            "--eval-every", str(self.eval_every),
            "--save-every", str(self.save_every),
            "--keep-checkpoints", "1",
            "--device", budget.device,
        ]  # fmt: skip
        if arm.method in ("omniopd", "sft"):
            argv += ["--gateway", gateway, "--teacher", str(arm.teacher)]
        if arm.method == "omniopd":
            argv += ["--verifier", verifier]
        if arm.method == "opd":
            argv += ["--opd-teacher", str(w.teacher)]
        return [*argv, *budget.extra, *sized_for(places.world_name, arm.flags)]

    def shown(self, places: Places, budget: Budget) -> list[str]:
        """The arguments as the results page prints them ($W, $RUNS, $GATEWAY, $VERIFIER)."""
        return [places.show(a) for a in self.argv(places, budget, GATEWAY, VERIFIER)]

    def folder(self, places: Places, budget: Budget) -> Path:
        key = digest({"recipe": places.recipe, "argv": self.shown(places, budget)})
        return places.runs / self.arm.name / f"lr{self.lr:g}-seed{self.seed}-{key}"


def shell_word(arg: str) -> str:
    """Quoted for a POSIX shell, leaving a leading $W, $RUNS, $GATEWAY or $VERIFIER to expand."""
    if arg.startswith("$") and shlex.quote(arg[1:]) == arg[1:]:
        return arg
    return shlex.quote(arg)


def command_line(argv: list[str]) -> str:
    return "omniopd-train " + " ".join(shell_word(a) for a in argv)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the run in flight saved a checkpoint; rerun to continue."""


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Everything the trainer logs goes to the run's own train.log as well."""
    from omniopd.log import TextFormatter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def mean_or_none(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


DIAGNOSTICS = (
    "reward_mean", "advantage_std", "kl", "opd_kl", "sft_loss", "forks", "forks_scored",
    "forks_unanimous", "entropy_at_forks", "entropy_mean", "response_tokens_mean",
    "repetition_rate", "truncated_rate", "grad_norm", "time_step_s",
    # the published objective's (--objective likelihood)
    "chunks_per_response", "audited_fraction", "k_mean", "prior_mean", "target_mean",
    "target_min", "target_max",
    # its extensions' (--mixed-weight, --outcome-weight)
    "mixed_tokens", "mixed_prob",
)  # fmt: skip


def summarize_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's curve (held-out accuracy against updates and teacher tokens), totals, and the
    mean of the training signal's figures over the last quarter of the steps."""
    curve, tokens = [], 0
    for r in rows:
        tokens += r.get("teacher_tokens") or 0
        if r.get("eval_accuracy_greedy") is not None:
            curve.append(
                {
                    "step": r["step"],
                    "accuracy_greedy": r["eval_accuracy_greedy"],
                    "accuracy_sampled": r.get("eval_accuracy_sampled"),
                    "teacher_tokens": tokens,
                }
            )
    tail = rows[len(rows) - max(1, len(rows) // 4) :]
    return {
        "curve": curve,
        "teacher_tokens": tokens,
        "train_s": sum(r.get("time_step_s") or 0.0 for r in rows),
        "eval_s": sum(r.get("eval_seconds") or 0.0 for r in rows),
        "forks_failed": sum(r.get("forks_failed") or 0 for r in rows),
        "white_box_teacher_tokens": (
            sum((r.get("response_tokens_mean") or 0.0) for r in rows) if rows else 0.0
        ),
        "last_quarter": {k: mean_or_none([r.get(k) for r in tail]) for k in DIAGNOSTICS},
    }


def evaluate_model(
    path: Path | str,
    rows_path: Path,
    *,
    budget: Budget,
    seed: int,
    sampled: bool,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """``omniopd.evaluation.evaluate`` with the trainer's settings (τ = 1, batch 64); answers
    up to ``max_new_tokens`` of the model's own tokens (default: the budget's limit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.answers import read_jsonl
    from omniopd.evaluation import evaluate

    model = AutoModelForCausalLM.from_pretrained(path).to(budget.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = evaluate(
        model,
        tokenizer,
        list(read_jsonl(rows_path)),
        max_new_tokens=max_new_tokens or budget.max_new_tokens,
        batch_size=EVAL_BATCH,
        temperature=1.0,
        seed=seed,
        sampled=sampled,
    )
    return result.summary()


def needs_services(spec: RunSpec) -> bool:
    return spec.arm.method in ("omniopd", "sft")


def train_run(spec: RunSpec, places: Places, budget: Budget, services: Services) -> dict[str, Any]:
    """Train (or resume) one run in this process against the stack (:func:`fit`), then make
    sure the stack lived through it (:func:`check_stack`)."""
    gateway, verifier = services.up() if needs_services(spec) else (GATEWAY, VERIFIER)
    result = fit(spec, places, budget, gateway, verifier)
    check_stack(spec, places, budget, services)
    return result


def check_stack(spec: RunSpec, places: Places, budget: Budget, services: Services) -> None:
    """A run whose gateway or verifier died under it had its forks fail from some step on:
    it is removed, to be redone whole by a rerun, never kept."""
    if needs_services(spec) and (reason := services.dead()) is not None:
        shutil.rmtree(spec.folder(places, budget), ignore_errors=True)
        raise RuntimeError(f"{reason} during the run; it was removed, to be redone by a rerun")


def fit(
    spec: RunSpec, places: Places, budget: Budget, gateway: str, verifier: str
) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it on val if it is a sweep run, save result.json.
    Needs no ``Services``: it runs in this process or in a child (``--jobs``)."""
    from omniopd.trainer.checkpoint import latest_checkpoint
    from omniopd.trainer.config import parse_config
    from omniopd.trainer.train import train

    folder = spec.folder(places, budget)
    argv = spec.argv(places, budget, gateway, verifier)
    if latest_checkpoint(folder) is None and (folder / "metrics.jsonl").exists():
        # Nothing to resume from: start clean (the trainer would append to the old lines).
        (folder / "metrics.jsonl").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    config, _ = parse_config([*argv, "--output-dir", str(folder), "--resume"])
    start = time.monotonic()
    with run_log(folder / "train.log"):
        summary = train(config)
    if summary.get("stopped_by_signal"):
        raise Interrupted(f"{spec.arm.name} lr={spec.lr:g} seed={spec.seed} stopped")
    run_s = time.monotonic() - start
    metrics = read_metrics(folder / "metrics.jsonl")
    # From the file, not the summary: a run killed after its last checkpoint has nothing left
    # to train when resumed, and its summary then holds no evaluation.
    last = metrics[-1] if metrics else {}
    if last.get("step") != spec.steps or last.get("eval_accuracy_greedy") is None:
        raise RuntimeError(f"{folder / 'metrics.jsonl'}: no evaluation at step {spec.steps}")
    final = {k.removeprefix("eval_"): v for k, v in last.items() if k.startswith("eval_")}
    val = None
    val_s = 0.0
    if spec.sweep:
        checkpoint = latest_checkpoint(folder)
        assert checkpoint is not None, f"{folder}: no checkpoint after the last step"
        t0 = time.monotonic()
        val = evaluate_model(
            checkpoint / "model", places.val_rows, budget=budget, seed=spec.seed, sampled=False
        )
        val_s = time.monotonic() - t0
    result = {
        "arm": spec.arm.name,
        "lr": spec.lr,
        "seed": spec.seed,
        "steps": last["step"],
        "command": command_line(spec.shown(places, budget)),
        "config": {
            k: places.show(str(v)) if isinstance(v, str) else v
            for k, v in config.model_dump().items()
            if k not in ("gateway", "verifier", "output_dir", "resume")
        },
        "final": final,
        "val": val,
        "val_s": val_s,
        "run_s": run_s,  # this attempt's wall time, start-up included (a resumed run: the rest)
        **summarize_metrics(metrics),
    }
    write_json(folder / RESULT, result)
    return result


# -- an arm's runs --------------------------------------------------------------------------


def sweep_specs(arm: Arm, budget: Budget) -> list[RunSpec]:
    return [
        RunSpec(arm, lr, budget.seeds[0], budget.steps, budget.eval_every, budget.save_every, True)
        for lr in budget.lrs
    ]


def seed_specs(arm: Arm, lr: float, budget: Budget) -> list[RunSpec]:
    return [
        RunSpec(arm, lr, seed, budget.steps, budget.eval_every, budget.save_every, False)
        for seed in budget.seeds[1:]
    ]


def choose_lr(results: list[dict[str, Any]]) -> float:
    """The best val greedy accuracy; a tie goes to the smaller learning rate."""
    return min(results, key=lambda r: (-r["val"]["accuracy_greedy"], r["lr"]))["lr"]


def load_result(spec: RunSpec, places: Places, budget: Budget) -> dict[str, Any] | None:
    path = spec.folder(places, budget) / RESULT
    return read_json(path) if path.is_file() else None


def chosen_run(arm: Arm, places: Places, budget: Budget) -> dict[str, Any] | None:
    """The arm's sweep run at its chosen learning rate (first seed), once the sweep is done."""
    sweep = [load_result(s, places, budget) for s in sweep_specs(arm, budget)]
    if not all(sweep):
        return None
    lr = choose_lr(sweep)  # type: ignore[arg-type]
    return next(r for r in sweep if r and r["lr"] == lr)


def resolve(arm: Arm, places: Places, budget: Budget) -> Arm | None:
    """The arm with every flag it runs with; for an SFT arm matched to another arm's teacher
    tokens, its answers per prompt, or None while that arm or plain SFT is unfinished."""
    if arm.matches is None:
        return arm
    target = chosen_run(ARMS[ARM_NAMES.index(arm.matches)], places, budget)
    sft = chosen_run(ARMS[ARM_NAMES.index("sft")], places, budget)
    if target is None or sft is None:
        return None
    k = max(1, round(target["teacher_tokens"] / max(1, sft["teacher_tokens"])))
    if k > TEACHER_MAX_N:
        raise RuntimeError(
            f"{arm.name}: {k} answers per prompt to match {arm.matches}, more than the "
            f"gateway's max_n ({TEACHER_MAX_N})"
        )
    return replace(arm, flags=(*arm.flags, "--sft-answers", str(k)))


# The arms the goals are judged by run first (an experiment stopped part-way has judged what it
# could), SFT and the named arm before the SFT sized from their runs; the rest in table order.
RUN_FIRST = (
    "sft", NAMED_ARM, "sft-matched", "opd", "grpo", "omniopd", "omniopd-random-forks",
    "omniopd-char",
)  # fmt: skip


def run_order(arms: list[Arm]) -> list[Arm]:
    """The order the arms train in (RUN_FIRST first)."""
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    return sorted(arms, key=lambda a: rank.get(a.name, len(rank)))
