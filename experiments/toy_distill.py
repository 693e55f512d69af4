"""The headline experiment (issue 7): OmniOPD against SFT, GRPO and white-box OPD on the toy world.

One command runs every arm of the comparison and its ablations on the same student, the same
data and the same number of student updates, with the same learning-rate sweep for every arm,
and writes the results page, a JSON summary and plots::

    .venv/bin/python experiments/toy_distill.py                  # the whole experiment
    .venv/bin/python experiments/toy_distill.py --estimate       # time a few steps per arm first

By default: 14 arms, 100 updates of 16 prompts per run, learning rates 1e-4, 3e-4 and 1e-3
swept on val, seeds 0, 1 and 2 (65 training runs): about 65 minutes on a 2-core CPU with
nothing else running, far longer on a shared one; ``--estimate`` says which, before you start.

What it does, in order:

1. the toy world (``omniopd.toy.ensure_toy_world``; ``--world`` for another folder);
2. ``omniopd-stack`` (the gateway serving the toy teacher as ``toy`` and teacher-char as
   ``toy-char``, both ``hf`` backends, and the verifier), started the first time a run needs it;
3. the initial student and both teachers evaluated on the held-out eval split;
4. per arm, the learning-rate sweep: one run per learning rate (first seed), each final model
   evaluated on the **val** split; the learning rate with the best val accuracy is the arm's;
5. per arm, the other seeds at that learning rate;
6. ``--docs``/results.md and ``--docs``/results/summary.json (rewritten after each arm that
   trained), and PNG plots in ``--docs``/results/ at the end.

Every training run is ``omniopd-train`` (the same argument parsing and ``train()``, called in
this process to save the start-up of a fresh interpreter per run), into
``--runs-dir/<arm>/lr<lr>-seed<seed>-<hash>/``, where the hash covers the run's whole command:
change the budget or a flag and the runs are new. A run's ``result.json`` is written when it
has finished; a rerun of the same command skips finished runs and resumes an interrupted one
from its last checkpoint (``--resume``). Ctrl-C stops after the step in flight; run the same
command again to continue.

The held-out accuracy reported is greedy accuracy on the eval split at the last step (the
trainer's own evaluation, ``omniopd.evaluation``); the val split only chooses learning rates.
Flags after ``--`` go to every training run's ``omniopd-train`` (never per arm), e.g.
``-- --chunk-tokens 8 --beta 0.1``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

# One thread per process, before torch loads: on a small shared CPU the trainer, gateway and
# verifier lose far less to contention than OpenMP threads spinning on busy cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

log = logging.getLogger("omniopd.experiments.toy_distill")

TEACHER, TEACHER_CHAR = "toy", "toy-char"
TEACHER_MAX_N = 16  # continuations (or SFT answers) per request the gateway serves
# The answer-length limit of each world's runs and evaluations, in student tokens.
ANSWER_TOKENS = {"arith": 40, "chain": 128}
RESULT = "result.json"
EVAL_BATCH = 64  # the trainer's eval_batch_size default: evaluations here decode alike
# Updates per run, the same for every arm. `--estimate` on the project's 2-core machine while
# three other jobs shared it (load average 10.7) gave, for 65 runs of 90 updates: 157 min of
# wall time at that load, 58 min with the CPU to itself (the CPU its runs used, trainer and
# services together, with no overlap). With the CPU to itself 150 updates (the quick
# check) would take about 91 min; 100 take about 64, which leaves room for the estimate's
# error and for some other load (at a load average of 8, an earlier estimate gave 93 min).
DEFAULT_STEPS = 100


# -- the arms -------------------------------------------------------------------------------

# The OmniOPD arm named, before the chain world's first run, as the one to judge the goals by
# (docs/results.md): the published objective plus the teacher's consensus text, off-policy.
NAMED_ARM = "omniopd-mixed"


@dataclass(frozen=True)
class Arm:
    name: str
    method: str | None  # None: the initial student, not trained
    what: str
    teacher: str | None = None  # the gateway teacher it reads (omniopd, sft)
    flags: tuple[str, ...] = ()  # what makes the arm itself
    ablation: bool = False
    # SFT sized to another arm's teacher tokens: ``--sft-answers`` answers per prompt, k the
    # ratio of that arm's teacher tokens to plain SFT's (both at their chosen rate, first seed)
    matches: str | None = None


# OmniOPD's knobs that the ablations change, pinned for every OmniOPD arm: a change of the
# trainer's defaults cannot silently turn an ablation into a copy of the base arm.
OMNIOPD_BASE = (
    *("--objective", "drafts", "--prior", "student", "--metric", "embedding"),
    *("--fork-strategy", "peak", "--alpha", "2", "--reward", "prob", "--baseline", "group"),
)
# The published objective, sized for the arith world's ~27-token answers: 2 chunks of 8 tokens
# per response (about 60% of an answer audited), 8 teacher samples each; α and β as published.
# The paper's C = 50 would not fit in one toy answer. The chunks follow the world
# (CHUNKS_BY_WORLD, applied when a run's flags are written).
LIKELIHOOD_BASE = (
    *("--objective", "likelihood", "--metric", "edit", "--fork-strategy", "peak"),
    *("--chunk-tokens", "8", "--chunks-per-response", "2", "--teacher-samples", "8"),
    *("--alpha", "1", "--beta", "0.1"),
)


# The published objective's chunks per world: 2 of 8 tokens in the arith world's ~27-token
# answers, 4 of 16 in the chain world's 73-124 (about the same share audited, 60 %).
CHUNKS_BY_WORLD = {
    "arith": {"--chunk-tokens": "8", "--chunks-per-response": "2"},
    "chain": {"--chunk-tokens": "16", "--chunks-per-response": "4"},
}


def sized_for(world: str, flags: tuple[str, ...]) -> list[str]:
    """An arm's flags with the published objective's chunk sizes of ``world``."""
    out = list(flags)
    if "likelihood" in out:
        for flag, value in CHUNKS_BY_WORLD[world].items():
            out[out.index(flag) + 1] = value
    return out


def _ablation(
    name: str, what: str, flag: str, value: str, base: tuple[str, ...] = OMNIOPD_BASE
) -> Arm:
    flags = list(base)
    flags[flags.index(flag) + 1] = value
    return Arm(name, "omniopd", what, TEACHER, tuple(flags), ablation=True)


ARMS: tuple[Arm, ...] = (
    Arm("student", None, "the initial student, not trained"),
    Arm("sft", "sft", "cross-entropy on the teacher's full answers (read through the gateway)",
        TEACHER),
    Arm("sft-matched", "sft", "SFT given as many teacher tokens as the named arm "
        f"(`{NAMED_ARM}`): k teacher answers per prompt", TEACHER, matches=NAMED_ARM),
    Arm("grpo", "grpo", "self-exploratory RL: GRPO on the answer checker's 0/1 reward"),
    Arm("opd", "opd", "white-box OPD: per-token reverse KL to the same-tokenizer teacher"),
    Arm("omniopd", "omniopd", "OmniOPD, the same teacher used as a black box (text only)",
        TEACHER, OMNIOPD_BASE),
    Arm("omniopd-char", "omniopd", "OmniOPD with teacher-char (another tokenizer; OPD cannot)",
        TEACHER_CHAR, OMNIOPD_BASE),
    _ablation("omniopd-uniform-prior", "prior mean 0.5 instead of the student's", "--prior",
              "uniform"),
    _ablation("omniopd-lexical", "character n-gram F-score instead of embeddings", "--metric",
              "lexical"),
    _ablation("omniopd-hybrid", "mean of the embedding and lexical scores", "--metric", "hybrid"),
    _ablation("omniopd-random-forks", "forks at random positions (as many as at peaks)",
              "--fork-strategy", "random"),
    _ablation("omniopd-alpha0.5", "prior strength α = 0.5", "--alpha", "0.5"),
    _ablation("omniopd-alpha8", "prior strength α = 8", "--alpha", "8"),
    _ablation("omniopd-logratio", "reward log p_T − log p_S instead of p_T", "--reward",
              "logratio"),
    _ablation("omniopd-batch-baseline", "advantages centred over the step, not per fork",
              "--baseline", "batch"),
    Arm("omniopd-likelihood", "omniopd", "the published objective: π̂-weighted likelihood of "
        "the student's own chunks, edit similarity", TEACHER, LIKELIHOOD_BASE, ablation=True),
    _ablation("omniopd-likelihood-rouge1", "the published objective with ROUGE-1 F1",
              "--metric", "rouge1", LIKELIHOOD_BASE),
    _ablation("omniopd-likelihood-embedding", "the published objective with embedding cosine",
              "--metric", "embedding", LIKELIHOOD_BASE),
    Arm("omniopd-outcome", "omniopd", "this project's extension (after KDRL): the published "
        "objective plus the answer checker's reward on the whole response, λ = 1", TEACHER,
        (*LIKELIHOOD_BASE, "--outcome-weight", "1"), ablation=True),
    Arm("omniopd-mixed", "omniopd", "this project's extension (after LUFFY): the published "
        "objective plus each chunk's consensus teacher continuation, off-policy, μ = 1", TEACHER,
        (*LIKELIHOOD_BASE, "--mixed-weight", "1"), ablation=True),
)  # fmt: skip
ARM_NAMES = tuple(a.name for a in ARMS)
# The trainer's default objective is drafts, so `omniopd` is also the drafts arm.
ALIASES = {"omniopd-drafts": "omniopd"}
# The arms run by default: the baselines, both objectives, the published objective's three
# agreements, its two extensions, teacher-char and random audits. The other ablations of the
# drafts design run when named (--arms NAME ..., or --arms all).
DEFAULT_ARMS = (
    "student", "sft", "sft-matched", "grpo", "opd", "omniopd", "omniopd-char",
    "omniopd-random-forks", "omniopd-likelihood", "omniopd-likelihood-rouge1",
    "omniopd-likelihood-embedding", "omniopd-outcome", "omniopd-mixed",
)  # fmt: skip
MAIN_ARMS = ("student", "sft", "sft-matched", "grpo", "opd", "omniopd", NAMED_ARM, "omniopd-char")

# Set by the experiment itself: the same for every arm (budget options) or per run.
MANAGED_FLAGS = {
    "--method", "--student", "--dataset", "--eval-dataset", "--eval-size", "--gateway",
    "--teacher", "--verifier", "--opd-teacher", "--output-dir", "--steps", "--batch-size",
    "--lr", "--seed", "--eval-every", "--save-every", "--keep-checkpoints", "--resume",
    "--no-resume", "--max-new-tokens", "--device", "--config", "--lr-schedule", "--sft-answers",
}  # fmt: skip


# -- the budget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What every arm gets alike."""

    steps: int
    batch_size: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    evals: int  # held-out evaluations per run, evenly spaced, the last at the last step
    max_new_tokens: int
    device: str
    extra: tuple[str, ...]  # flags after --, for every training run
    lr_schedule: str = "linear"

    @property
    def eval_every(self) -> int:
        return max(1, math.ceil(self.steps / self.evals))

    @property
    def save_every(self) -> int:
        return self.eval_every  # a killed run redoes at most one evaluation interval


def split_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """``--name value`` pairs (``value`` None for a boolean flag such as ``--no-resume``)."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        name = tokens[i]
        if not name.startswith("--"):
            raise SystemExit(f"trainer flags after --: expected --name, got {name!r}")
        if "=" in name:
            key, value = name.split("=", 1)
            pairs.append((key, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            pairs.append((name, tokens[i + 1]))
            i += 2
        else:
            pairs.append((name, None))
            i += 1
    return pairs


def check_extra(extra: list[str]) -> tuple[str, ...]:
    arm_flags = {f for arm in ARMS for f in arm.flags if f.startswith("--")}
    for name, _ in split_flags(extra):
        if name in MANAGED_FLAGS:
            raise SystemExit(
                f"{name} after --: set by the experiment itself (see --help for its own option)"
            )
        if name in arm_flags:
            raise SystemExit(
                f"{name} after --: it is what some arms differ in, so it cannot be set for all"
            )
    return tuple(extra)


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
    path: Path | str, rows_path: Path, *, budget: Budget, seed: int, sampled: bool
) -> dict[str, Any]:
    """``omniopd.evaluation.evaluate`` with the trainer's settings (τ = 1, batch 64)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.evaluation import evaluate
    from omniopd.toy.task import read_jsonl

    model = AutoModelForCausalLM.from_pretrained(path).to(budget.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = evaluate(
        model,
        tokenizer,
        list(read_jsonl(rows_path)),
        max_new_tokens=budget.max_new_tokens,
        batch_size=EVAL_BATCH,
        temperature=1.0,
        seed=seed,
        sampled=sampled,
    )
    return result.summary()


def train_run(spec: RunSpec, places: Places, budget: Budget, services: Services) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it on val if it is a sweep run, save result.json."""
    from omniopd.trainer.checkpoint import latest_checkpoint
    from omniopd.trainer.config import parse_config
    from omniopd.trainer.train import train

    folder = spec.folder(places, budget)
    needs_services = spec.arm.method in ("omniopd", "sft")
    gateway, verifier = services.up() if needs_services else (GATEWAY, VERIFIER)
    argv = spec.argv(places, budget, gateway, verifier)
    if latest_checkpoint(folder) is None and (folder / "metrics.jsonl").exists():
        # Nothing to resume from: start clean (the trainer would append to the old lines).
        (folder / "metrics.jsonl").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    config, _ = parse_config([*argv, "--output-dir", str(folder), "--resume"])
    start = time.monotonic()
    with run_log(folder / "train.log"):
        summary = train(config)
    if needs_services and (reason := services.dead()) is not None:
        # Its forks failed from some step on: redo the whole run (next time), never keep it.
        shutil.rmtree(folder)
        raise RuntimeError(f"{reason} during the run; it was removed, to be redone by a rerun")
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


# -- the plan -------------------------------------------------------------------------------


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


@dataclass
class Progress:
    total: int
    done: int = 0
    run_seconds: list[float] = field(default_factory=list)

    def eta(self) -> str:
        if not self.run_seconds:
            return "?"
        left = (self.total - self.done) * statistics.mean(self.run_seconds)
        return f"{left / 60:.0f} min"


def reference_evals(places: Places, budget: Budget) -> dict[str, Any]:
    """The initial student (once per seed: sampled pass@1 depends on it) and both teachers,
    on the eval split; cached in the runs folder."""
    w = places.world
    out: dict[str, Any] = {"student": {}, "teachers": {}}
    todo = [("student", w.student, seed) for seed in budget.seeds]
    todo += [
        ("teacher", w.teacher, budget.seeds[0]),
        ("teacher-char", w.teacher_char, budget.seeds[0]),
    ]
    for name, path, seed in todo:
        key = digest(
            {
                "recipe": places.recipe,
                "rows": places.show(str(places.eval_rows)),
                "max_new_tokens": budget.max_new_tokens,
                "seed": seed,
                "device": budget.device,
            }
        )
        cached = places.runs / "reference" / f"{name}-seed{seed}-{key}.json"
        if cached.is_file():
            result = read_json(cached)
        else:
            say(f"evaluating {name} (seed {seed}) on {places.eval_rows.name}")
            result = evaluate_model(path, places.eval_rows, budget=budget, seed=seed, sampled=True)
            write_json(cached, result)
        if name == "student":
            out["student"][seed] = result
        else:
            out["teachers"][name] = result
    return out


def run_experiment(
    args: argparse.Namespace, places: Places, budget: Budget, arms: list[Arm]
) -> int:
    services = Services(places)
    trained = run_order([a for a in arms if a.method is not None])
    n_runs = len(trained) * (len(budget.lrs) + len(budget.seeds) - 1)
    finished = 0
    for arm in trained:
        if (resolved := resolve(arm, places, budget)) is None:
            continue
        specs = sweep_specs(resolved, budget)
        sweep = [load_result(s, places, budget) for s in specs]
        finished += sum(r is not None for r in sweep)
        if all(sweep):
            lr = choose_lr(sweep)  # type: ignore[arg-type]
            finished += sum(
                load_result(s, places, budget) is not None for s in seed_specs(arm, lr, budget)
            )
    validate_configs(places, budget, trained)
    progress = Progress(total=n_runs, done=finished)
    say(
        f"{len(arms)} arms, {n_runs} training runs ({finished} already finished): "
        f"{budget.steps} steps of {budget.batch_size} prompts, learning rates "
        f"{', '.join(f'{lr:g}' for lr in budget.lrs)}, seeds "
        f"{', '.join(map(str, budget.seeds))}; runs in {places.runs}"
    )
    # A rerun that trains nothing only re-renders the page: it keeps the training invocation's
    # wall time (``started`` None) rather than reporting its own few seconds.
    started: float | None = time.monotonic() if finished < n_runs else None
    failures: list[str] = []
    try:
        references = reference_evals(places, budget)
        for arm in trained:
            try:
                if (resolved := resolve(arm, places, budget)) is None:
                    raise RuntimeError(
                        f"sized from {arm.matches}'s and sft's runs, which are unfinished "
                        f"(run them first: --arms sft {arm.matches} {arm.name})"
                    )
                trained_now = run_arm(resolved, places, budget, services, progress)
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as err:  # one broken arm must not cost the others their results
                log.exception("arm %s failed", arm.name)
                failures.append(f"{arm.name}: {type(err).__name__}: {err}")
                say(f"arm {arm.name} FAILED ({err}); going on with the others")
                trained_now = True
            if trained_now:  # the page and summary so far (the plots come at the end)
                write_report(args, places, budget, arms, references, started, services, plots=False)
        write_report(args, places, budget, arms, references, started, services, plots=True)
    except (Interrupted, KeyboardInterrupt) as err:
        say(
            f"interrupted ({err or 'Ctrl-C'}): finished runs are kept, the run in flight "
            "saved a checkpoint; run the same command again to continue"
        )
        return 130
    finally:
        services.stop()
    say(f"results: {places.docs / 'results.md'}, {places.results / 'summary.json'}")
    if failures:
        say("FAILED arms:\n  " + "\n  ".join(failures))
        return 1
    return 0


def validate_configs(places: Places, budget: Budget, arms: list[Arm]) -> None:
    """Every arm's trainer config, checked before anything runs: a bad flag after -- fails
    now, naming it, not an hour in."""
    from omniopd.trainer.config import parse_config

    for arm in arms:
        if arm.matches is not None:  # its answers per prompt are known later; any will do now
            arm = replace(arm, flags=(*arm.flags, "--sft-answers", "2"))
        spec = sweep_specs(arm, budget)[0]
        parse_config([*spec.argv(places, budget, "host:0", "http://host:0"), "--output-dir", "x"])


def run_arm(
    arm: Arm, places: Places, budget: Budget, services: Services, progress: Progress
) -> bool:
    """The arm's sweep, then its other seeds; whether any run was trained now."""
    trained = False

    def one(spec: RunSpec) -> dict[str, Any]:
        nonlocal trained
        done = load_result(spec, places, budget)
        if done is not None:
            return done
        trained = True
        progress.done += 1
        say(
            f"[{progress.done}/{progress.total}] {arm.name}: lr {spec.lr:g}, seed {spec.seed}"
            f"{' (sweep)' if spec.sweep else ''}, {spec.steps} steps; about "
            f"{progress.eta()} left"
        )
        t0 = time.monotonic()
        result = train_run(spec, places, budget, services)
        progress.run_seconds.append(time.monotonic() - t0)
        val = result["val"]["accuracy_greedy"] if result["val"] else None
        say(
            f"    {arm.name} lr {spec.lr:g} seed {spec.seed}: held-out "
            f"{result['final'].get('accuracy_greedy', float('nan')):.3f}"
            + (f", val {val:.3f}" if val is not None else "")
            + f" ({time.monotonic() - t0:.0f} s)"
        )
        return result

    sweep = [one(s) for s in sweep_specs(arm, budget)]
    lr = choose_lr(sweep)
    if trained and len(budget.lrs) > 1:
        say(f"    {arm.name}: learning rate {lr:g} (best on val)")
    for spec in seed_specs(arm, lr, budget):
        one(spec)
    return trained


# -- the report -----------------------------------------------------------------------------


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def collect(
    places: Places, budget: Budget, arms: list[Arm], references: dict[str, Any]
) -> dict[str, Any]:
    """Per arm: the chosen learning rate's runs (all seeds), their figures and curves."""
    out: dict[str, Any] = {}
    student = references["student"]
    for arm in arms:
        if arm.method is None:
            accs = [student[s]["accuracy_greedy"] for s in budget.seeds]
            sampled = [student[s]["accuracy_sampled"] for s in budget.seeds]
            out[arm.name] = {
                "what": arm.what,
                "complete": True,
                "mean": statistics.mean(accs),
                "std": std(accs),
                "seeds": list(budget.seeds),
                "accuracy_per_seed": accs,
                "sampled_mean": statistics.mean(sampled),
                "sampled_std": std(sampled),
                "teacher_tokens": 0,
                "repetition_rate": statistics.mean(
                    student[s]["repetition_rate"] for s in budget.seeds
                ),
                "truncated_rate": statistics.mean(
                    student[s]["truncated_rate"] for s in budget.seeds
                ),
                "wall_s": 0.0,
                "lr": None,
                "lr_sweep": {},
                "steps": 0,
                "command": None,
                "config": None,
                "curves": [],
            }
            continue
        if (resolved := resolve(arm, places, budget)) is None:
            out[arm.name] = {"what": arm.what, "complete": False, "lr_sweep": {}}
            continue
        arm = resolved
        sweep = [load_result(s, places, budget) for s in sweep_specs(arm, budget)]
        lr_sweep = {f"{r['lr']:g}": r["val"]["accuracy_greedy"] for r in sweep if r}
        if not all(sweep):
            out[arm.name] = {"what": arm.what, "complete": False, "lr_sweep": lr_sweep}
            continue
        lr = choose_lr(sweep)  # type: ignore[arg-type]
        runs = [next(r for r in sweep if r and r["lr"] == lr)]  # type: ignore[index]
        runs += [r for s in seed_specs(arm, lr, budget) if (r := load_result(s, places, budget))]
        accs = [r["final"]["accuracy_greedy"] for r in runs]
        sampled = [r["final"].get("accuracy_sampled") for r in runs]
        first = runs[0]
        out[arm.name] = {
            "what": arm.what,
            "complete": len(runs) == len(budget.seeds),
            "mean": statistics.mean(accs),
            "std": std(accs),
            "seeds": [r["seed"] for r in runs],
            "accuracy_per_seed": accs,
            "sampled_mean": mean_or_none(sampled),
            "sampled_std": std([s for s in sampled if s is not None]),
            "teacher_tokens": statistics.mean(r["teacher_tokens"] for r in runs),
            "repetition_rate": statistics.mean(r["final"]["repetition_rate"] for r in runs),
            "truncated_rate": statistics.mean(r["final"]["truncated_rate"] for r in runs),
            "wall_s": statistics.mean(r["train_s"] + r["eval_s"] for r in runs),
            "train_s": statistics.mean(r["train_s"] for r in runs),
            "forks_failed": sum(r["forks_failed"] for r in runs),
            "lr": lr,
            "lr_sweep": lr_sweep,
            "steps": first["steps"],
            "command": first["command"],
            "config": first["config"],
            "diagnostics": {
                k: mean_or_none([r["last_quarter"].get(k) for r in runs]) for k in DIAGNOSTICS
            },
            "curves": [{"seed": r["seed"], "points": r["curve"]} for r in runs],
        }
        if arm.matches is not None:
            out[arm.name]["answers_per_prompt"] = int(arm.flags[-1])
        if arm.method == "opd":
            # White-box OPD generates no teacher text: its teacher scores every response token.
            out[arm.name]["white_box_teacher_tokens"] = statistics.mean(
                r["white_box_teacher_tokens"] * budget.batch_size for r in runs
            )
    return out


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def mean_pm(entry: dict[str, Any]) -> str:
    return f"{pct(entry['mean'])} ± {pct(entry['std'])}"


def judge(arms: dict[str, Any]) -> list[str]:
    """The goals stated before the chain world's first run (GOALS), judged from the numbers;
    noise is the larger seed std of the two arms compared."""

    def ok(*names: str) -> bool:
        return all(
            n in arms and arms[n].get("complete", False) and "mean" in arms[n] for n in names
        )

    def versus(a: str, b: str) -> str:
        d = 100 * (arms[a]["mean"] - arms[b]["mean"])
        noise = 100 * max(arms[a]["std"], arms[b]["std"])
        size = "within" if abs(d) <= noise else "beyond"
        return (
            f"`{a}` {mean_pm(arms[a])} vs `{b}` {mean_pm(arms[b])}: {d:+.1f} points, "
            f"{size} the larger seed std ({noise:.1f})"
        )

    def verdict(met: bool) -> str:
        return f"**{'met' if met else 'missed'}**"

    def tokens(name: str) -> str:
        return f"`{name}` {arms[name]['teacher_tokens']:,.0f}"

    named = NAMED_ARM
    lines = []
    for i, (other, what) in enumerate(
        (("sft-matched", "beats SFT at equal teacher tokens"), ("grpo", "beats GRPO")), start=1
    ):
        if ok(named, other):
            extra = ""
            if other == "sft-matched":
                extra = f" Teacher tokens per run: {tokens(named)}, {tokens(other)}."
            lines.append(
                f"1{'ab'[i - 1]}. `{named}` {what}: "
                f"{verdict(arms[named]['mean'] > arms[other]['mean'])}. "
                f"{versus(named, other)}.{extra}"
            )
        else:
            lines.append(f"1{'ab'[i - 1]}. `{named}` {what}: not judged (arms incomplete).")
    if ok(named, "opd"):
        d = 100 * (arms[named]["mean"] - arms["opd"]["mean"])
        lines.append(
            f"1c. `{named}` (black box) within 2 points of white-box OPD or better: "
            f"{verdict(d >= -2)}. {versus(named, 'opd')}."
        )
    else:
        lines.append(f"1c. `{named}` within 2 points of OPD: not judged (arms incomplete).")
    if ok("omniopd", "omniopd-random-forks"):
        lines.append(
            "2. Audits at entropy peaks beat as many audits at random positions: "
            f"{verdict(arms['omniopd']['mean'] > arms['omniopd-random-forks']['mean'])}. "
            f"{versus('omniopd', 'omniopd-random-forks')}; teacher tokens per run "
            f"{tokens('omniopd')}, {tokens('omniopd-random-forks')}."
        )
    else:
        lines.append("2. Peak audits beat random audits: not judged (arms incomplete).")
    if ok("omniopd-char", "student"):
        lines.append(
            "3. OmniOPD with teacher-char beats the untrained student: "
            f"{verdict(arms['omniopd-char']['mean'] > arms['student']['mean'])}. "
            f"{versus('omniopd-char', 'student')}."
        )
    else:
        lines.append("3. Teacher-char beats the student: not judged (arms incomplete).")
    return lines


def edge_note(arms: dict[str, Any], lrs: list[float]) -> list[str]:
    """Arms whose best learning rate is the grid's smallest or largest: their optimum may lie
    outside it, which the reader should know before comparing them."""
    if len(lrs) < 2:
        return []
    low, high = min(lrs), max(lrs)
    edge = [f"`{n}` ({a['lr']:g})" for n, a in arms.items() if a.get("lr") in (low, high)]
    if not edge:
        return []
    return [
        "Chosen at an edge of the grid, so a better rate may lie outside it: "
        + ", ".join(edge)
        + ".",
        "",
    ]


# A hosted teacher's price per million generated tokens, to turn teacher tokens into money:
# the order of the list output price of today's mid-size hosted frontier models. A toy token is
# not a hosted model's token; the column shows how cost scales between arms, not a bill.
PRICE_PER_MILLION = 15.0

GOALS = f"""\
Stated on 2026-12-07, before any run on the chain world, and judged below from its numbers;
on the arith world the same goals are judged for comparison.

1. On `chain`, **`{NAMED_ARM}`** (named before the run: the published objective plus each
   chunk's consensus teacher continuation trained on off-policy, this project's extension after
   LUFFY) (a) beats `sft-matched`, SFT given as many teacher tokens, (b) beats GRPO, and (c) is
   within 2 points of white-box OPD or better. It is named because on the arith world SFT's
   edge came from imitating the teacher's text, which the published objective alone never
   trains on.
2. Audits at entropy peaks beat as many audits at random positions, at equal teacher tokens
   (`omniopd` against `omniopd-random-forks`).
3. OmniOPD with teacher-char (another tokenizer) beats the untrained student.
"""


def _has_target(arm: dict[str, Any]) -> bool:
    return (arm.get("diagnostics") or {}).get("target_mean") is not None


def experiment_command(argv: list[str]) -> str:
    return "python experiments/toy_distill.py" + "".join(f" {shlex.quote(a)}" for a in argv)


def num(v: float | None, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def arm_label(name: str, a: dict[str, Any]) -> str:
    label = f"`{name}`"
    if name in ALIASES.values():
        label += " (= " + ", ".join(f"`{k}`" for k, v in ALIASES.items() if v == name) + ")"
    if "answers_per_prompt" in a:
        label += f" (k = {a['answers_per_prompt']})"
    return label


def world_section(world: str, summary: dict[str, Any], notes: str | None) -> list[str]:
    """The page's section for one world, from that world's summary."""
    arms, b, refs = summary["arms"], summary["budget"], summary["references"]
    student = arms.get("student", {}).get("mean")
    price = summary.get("price_per_million", PRICE_PER_MILLION)
    wall = summary["wall_s"]
    lines = [
        f"## The {world} world",
        "",
        f"Toy world: recipe `{summary['recipe']}` ([toy.md](toy.md)); held-out accuracy is "
        f"greedy accuracy on {summary['eval_rows']} eval problems after the last update, "
        f"mean ± sample std over seeds, in percent. Every arm: the same student and data order "
        f"per seed, {b['steps']} updates of {b['batch_size']} prompts, answers up to "
        f"{b['max_new_tokens']} tokens, learning rate chosen per arm from "
        f"{{{', '.join(f'{lr:g}' for lr in b['lrs'])}}} ({b.get('lr_schedule', 'constant')} "
        f"schedule) by greedy accuracy on {summary['val_rows']} val problems with seed "
        f"{b['seeds'][0]}, then seeds {', '.join(map(str, b['seeds']))} at that rate. Wall time "
        "of the invocation that trained these runs: "
        + (f"{wall / 60:.0f} min" if wall is not None else "unknown")
        + f", on {summary['machine']}.",
        "",
        "Verdicts on the goals:",
        "",
        *judge(arms),
        "",
        f"| arm | held-out accuracy | Δ vs student | sampled pass@1 | lr | teacher tokens / run "
        f"| at ${price:g} / M tokens | repetition | truncated | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in arms.items():
        if "mean" not in a:
            lines.append(f"| {arm_label(name, a)} | (not finished) | | | | | | | | |")
            continue
        delta = (
            "–" if student is None or name == "student" else f"{100 * (a['mean'] - student):+.1f}"
        )
        seeds = "" if a.get("complete", True) else f" ({len(a['seeds'])} seeds so far)"
        lr = "–" if a["lr"] is None else f"{a['lr']:g}"
        cost = a["teacher_tokens"] * price / 1e6
        lines.append(
            f"| {arm_label(name, a)} | {mean_pm(a)}{seeds} | {delta} | {pct(a['sampled_mean'])}"
            f" ± {pct(a['sampled_std'])} | {lr} | {a['teacher_tokens']:,.0f} | ${cost:.2f} | "
            f"{pct(a['repetition_rate'])} | {pct(a['truncated_rate'])} | {a['wall_s']:.0f} |"
        )
    for name, r in refs["teachers"].items():
        lines.append(
            f"| {name} (reference) | {pct(r['accuracy_greedy'])} | | {pct(r['accuracy_sampled'])}"
            f" | | | | {pct(r['repetition_rate'])} | {pct(r['truncated_rate'])} | |"
        )
    opd_tokens = arms.get("opd", {}).get("white_box_teacher_tokens")
    lines += [
        "",
        "- *teacher tokens / run*: tokens the teacher generated through the gateway (OmniOPD's "
        "continuations, SFT's answers). White-box OPD generates none, but its teacher reads "
        "every response token"
        + (f" (about {opd_tokens:,.0f} per run)" if opd_tokens else "")
        + "; GRPO uses no teacher. The next column prices them at "
        f"${price:g} per million generated tokens, the order of a mid-size hosted frontier "
        "model's output price; a toy token is not a hosted model's token, so read it as the "
        "ratio between arms.",
        "- *repetition*: greedy held-out answers in which a 4-token run occurs 3 times or more; "
        "*truncated*: greedy held-out answers without end-of-sequence within "
        f"{b['max_new_tokens']} tokens (both at the last step, mean over seeds).",
        "- *wall s / run*: training steps plus the evaluations during training, mean over seeds "
        "(start-up excluded); the gateway and the verifier share the same 2 CPU cores.",
        "",
        f"![{world}: accuracy against student updates](results/{world}/accuracy_vs_updates.png)",
        "",
        f"![{world}: accuracy against teacher tokens]"
        f"(results/{world}/accuracy_vs_teacher_tokens.png)",
        "",
        f"### {world}: learning-rate sweep (val accuracy, seed {b['seeds'][0]})",
        "",
        "| arm | " + " | ".join(f"{lr:g}" for lr in b["lrs"]) + " |",
        "| --- |" + " --- |" * len(b["lrs"]),
    ]
    for name, a in arms.items():
        if name == "student":
            continue
        cells = []
        for lr in b["lrs"]:
            cell = pct(a.get("lr_sweep", {}).get(f"{lr:g}"))
            cells.append(f"**{cell}**" if a.get("lr") == lr else cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        *edge_note(arms, b["lrs"]),
        f"### {world}: the training signal (mean over the last quarter of the steps, all seeds)",
        "",
        "| arm | reward | advantage std | KL to π_ref | forks / step | scored | unanimous "
        "| entropy at forks | response tokens | rollout repetition | forks failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in arms.items():
        d = a.get("diagnostics")
        if not d:
            continue
        lines.append(
            f"| `{name}` | {num(d['reward_mean'])} | {num(d['advantage_std'])} | {num(d['kl'])} "
            f"| {num(d['forks'])} | {num(d['forks_scored'])} | {num(d['forks_unanimous'])} | "
            f"{num(d['entropy_at_forks'])} | {num(d['response_tokens_mean'])} | "
            f"{pct(d['repetition_rate'])} | {a.get('forks_failed', 0)} |"
        )
    published = {n: a["diagnostics"] for n, a in arms.items() if _has_target(a)}
    if published:
        lines += [
            "",
            "The published objective's arms (`--objective likelihood`): chunks audited per "
            "response, the fraction of response tokens they cover, the teacher's soft agreement "
            "count k (of N), the student's own π̄, the target π̂ (mean, and the mean of each "
            "step's min and max), and for `omniopd-mixed` the off-policy tokens per step and "
            "their probability under the student.",
            "",
            "| arm | chunks / response | audited | k | π̄ | π̂ | π̂ min | π̂ max | KL / unaudited "
            "token | mixed tokens | mixed p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, d in published.items():
            lines.append(
                f"| `{name}` | {num(d['chunks_per_response'])} | {pct(d['audited_fraction'])} "
                f"| {num(d['k_mean'])} | {num(d['prior_mean'])} | {num(d['target_mean'])} "
                f"| {num(d['target_min'])} | {num(d['target_max'])} | {num(d['kl'])} "
                f"| {num(d.get('mixed_tokens'))} | {num(d.get('mixed_prob'))} |"
            )
    lines += [
        "",
        f"### {world}: what the numbers show",
        "",
        notes.strip() if notes else "No analysis has been written for these numbers yet.",
        "",
        f"### {world}: how to reproduce",
        "",
        "```bash",
        summary["command"],
        "```",
        "",
        "The gateway's `teachers.yaml` (started with `omniopd-stack`; `$W` is the world's "
        "folder, `$GATEWAY` and `$VERIFIER` the addresses the stack prints):",
        "",
        "```yaml",
        summary["teachers_yaml"].rstrip(),
        "```",
        "",
        "<details><summary>Each arm's command at its chosen learning rate (first seed; the "
        "other seeds change only <code>--seed</code>), and its resolved config</summary>",
        "",
    ]
    for name, a in arms.items():
        if not a.get("command"):
            continue
        lines += [
            f"#### {world}: `{name}`",
            "",
            a["what"] + ".",
            "",
            "```bash",
            a["command"],
            "```",
            "",
            "```yaml",
            yaml.safe_dump(a["config"], sort_keys=False).rstrip(),
            "```",
            "",
        ]
    lines += ["</details>", ""]
    return lines


WORLD_ORDER = ("chain", "arith")  # the headline world first


def markdown(page: dict[str, Any], notes: dict[str, str | None]) -> str:
    """The results page: the goals, then one section per world in ``page["worlds"]``."""
    worlds = sorted(page["worlds"], key=lambda w: (w not in WORLD_ORDER, WORLD_ORDER.index(w)
                    if w in WORLD_ORDER else 0, w))  # fmt: skip
    lines = [
        "# Results: OmniOPD against SFT, GRPO and white-box OPD on the two toy worlds",
        "",
        "Written by `experiments/toy_distill.py` from the runs it lists; every figure comes "
        "from them. The two toy worlds ([toy.md](toy.md)): `arith`, answers of about 27 tokens "
        "in one format, and `chain`, 4-6 numbered operations with every step written out, "
        "answers of 73-124 tokens in which a mistake carries to the end. Earlier runs on the "
        "arith world, at other budgets, are kept in [results-history.md](results-history.md).",
        "",
        "## Goals",
        "",
        GOALS,
    ]
    for world in worlds:
        lines += world_section(world, page["worlds"][world], notes.get(world))
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, refs = summary["arms"], summary["references"]
    price = summary.get("price_per_million", PRICE_PER_MILLION)
    student = arms.get("student", {}).get("mean")
    groups = [
        ("baselines and the main OmniOPD arms", [a for a in MAIN_ARMS if a != "student"]),
        ("OmniOPD variants", ["omniopd", *(a.name for a in ARMS if a.ablation)]),
    ]
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors

    def series(entry: dict[str, Any], key: str) -> tuple[list[float], list[float], list[float]]:
        """Mean over seeds at each evaluated step (steps every seed has), and the std."""
        curves = [{p["step"]: p for p in c["points"]} for c in entry.get("curves", [])]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        xs, ys, ss = [], [], []
        if student is not None:  # 0 updates, 0 teacher tokens: the initial student
            xs, ys, ss = [0.0], [student], [arms["student"]["std"]]
        for step in steps:
            accs = [c[step]["accuracy_greedy"] for c in curves]
            xs.append(float(statistics.mean(c[step][key] for c in curves)))
            ys.append(statistics.mean(accs))
            ss.append(std(accs))
        return xs, ys, ss

    for filename, key, xlabel, keep in (
        ("accuracy_vs_updates.png", "step", "student updates", lambda a: True),
        (
            "accuracy_vs_teacher_tokens.png",
            "teacher_tokens",
            "teacher tokens generated",
            lambda a: a.get("teacher_tokens", 0) > 0,
        ),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        for ax, (title, names) in zip(axes, groups, strict=True):
            for name in names:
                entry = arms.get(name)
                if not entry or "mean" not in entry or not keep(entry):
                    continue
                xs, ys, ss = series(entry, key)
                if len(xs) < 2:
                    continue
                color = colors[ARM_NAMES.index(name) % len(colors)]
                ax.plot(xs, ys, "o-", color=color, label=name, markersize=3)
                ax.fill_between(
                    xs,
                    [y - s for y, s in zip(ys, ss, strict=True)],
                    [y + s for y, s in zip(ys, ss, strict=True)],
                    color=color,
                    alpha=0.12,
                )
            if key == "teacher_tokens":
                if title.startswith("baselines"):
                    for name, style in (("opd", ":"), ("grpo", "-.")):
                        entry = arms.get(name)
                        if entry and "mean" in entry:
                            ax.axhline(
                                entry["mean"],
                                linestyle=style,
                                color="black",
                                alpha=0.6,
                                label=f"{name} (no teacher tokens), final",
                            )
                top = ax.secondary_xaxis(
                    "top", functions=(lambda t: t * price / 1e6, lambda d: d * 1e6 / price)
                )
                top.set_xlabel(f"at ${price:g} per million teacher tokens ($)", fontsize=8)
            for j, (name, r) in enumerate(refs["teachers"].items()):
                ax.axhline(
                    r["accuracy_greedy"],
                    linestyle="--",
                    color="gray",
                    alpha=0.5 + 0.3 * j,
                    label=f"{name} (reference)",
                )
            if student is not None:
                ax.axhline(student, linestyle=":", color="gray", label="initial student")
            ax.set(title=title, xlabel=xlabel, ylim=(0, 1))
            ax.legend(fontsize=7, loc="best")
        axes[0].set_ylabel("held-out accuracy (greedy), mean ± std over seeds")
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in arms.items():
        sweep = entry.get("lr_sweep") or {}
        if not sweep:
            continue
        lrs = sorted(sweep, key=float)
        ax.plot(
            [float(lr) for lr in lrs],
            [sweep[lr] for lr in lrs],
            "o-",
            label=name,
            color=colors[ARM_NAMES.index(name) % len(colors)],
            markersize=3,
        )
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="val accuracy (greedy), first seed",
        title="learning-rate sweep",
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "lr_sweep.png", dpi=110)
    plt.close(fig)


DEFINITIONS = {
    "worlds.<world>": "one toy world's experiment (docs/toy.md), written by its own invocation",
    "mean": "held-out greedy accuracy (eval split) after the last update, mean over seeds",
    "std": "sample standard deviation of that accuracy over seeds (0 for one seed)",
    "seeds": "the seeds run (data order, sampling, forks); the first also ran the lr sweep",
    "teacher_tokens": "tokens the teacher generated through the gateway, mean per run",
    "answers_per_prompt": "sft-matched: teacher answers per prompt (--sft-answers)",
    "repetition_rate": "greedy held-out answers with a 4-token run 3+ times, mean over seeds",
    "truncated_rate": "greedy held-out answers without eos within max_new_tokens, mean",
    "wall_s": "seconds of training steps plus in-training evaluations, mean per run",
    "lr": "the learning rate chosen on the val split (first seed)",
    "lr_sweep": "val greedy accuracy per learning rate (first seed)",
    "price_per_million": "dollars per million teacher tokens in the page's cost column",
}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One writer at a time: both worlds' experiments may run at once and share the page."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_page(places: Places) -> dict[str, Any]:
    """summary.json as on disk (one entry per world), or an empty one."""
    path = places.results / "summary.json"
    page = json.loads(path.read_text()) if path.exists() else {}
    return page if "worlds" in page else {"definitions": DEFINITIONS, "worlds": {}}


def invocation_time(
    places: Places, args: argparse.Namespace, started: float | None, services: Services
) -> dict[str, Any]:
    """``wall_s`` and ``stack_start_s`` of the invocation that trained the runs: this one, or
    (``started`` None: nothing left to train) the one recorded in the summary on disk."""
    if started is not None:
        return {"wall_s": round(time.monotonic() - started, 1), "stack_start_s": services.start_s}
    previous = read_page(places)["worlds"].get(places.world_name, {})
    if previous.get("command") != experiment_command(args.argv):
        return {"wall_s": None, "stack_start_s": None}
    return {"wall_s": previous.get("wall_s"), "stack_start_s": previous.get("stack_start_s")}


def notes_path(args: argparse.Namespace, world: str) -> Path:
    return Path(str(args.notes).replace("{world}", world))


def write_report(
    args: argparse.Namespace,
    places: Places,
    budget: Budget,
    arms: list[Arm],
    references: dict[str, Any],
    started: float | None,
    services: Services,
    *,
    plots: bool,
) -> dict[str, Any]:
    """This world's entry of summary.json, and results.md from every world's entry; this
    world's PNGs too with ``plots``."""
    teachers = Services(places).teachers_config()
    for t in teachers["teachers"]:
        t["model"] = places.show(t["model"])
    world = places.world_name
    summary = {
        "command": experiment_command(args.argv),
        "recipe": places.recipe,
        "world": places.show(str(places.world.root)),
        "eval_rows": sum(1 for line in places.eval_rows.read_text().splitlines() if line.strip()),
        "val_rows": sum(1 for line in places.val_rows.read_text().splitlines() if line.strip()),
        "budget": {
            "steps": budget.steps,
            "batch_size": budget.batch_size,
            "lrs": list(budget.lrs),
            "lr_schedule": budget.lr_schedule,
            "seeds": list(budget.seeds),
            "evals": budget.evals,
            "eval_every": budget.eval_every,
            "max_new_tokens": budget.max_new_tokens,
            "trainer_flags": list(budget.extra),
        },
        "machine": f"{os.cpu_count()} CPU cores, device {budget.device}",
        **invocation_time(places, args, started, services),
        "price_per_million": PRICE_PER_MILLION,
        "teachers_yaml": yaml.safe_dump(teachers, sort_keys=False),
        "references": {
            "teachers": references["teachers"],
            "student": {str(k): v for k, v in references["student"].items()},
        },
        "arms": collect(places, budget, arms, references),
    }
    with locked(places.results / ".lock"):
        page = read_page(places)
        page["definitions"] = DEFINITIONS
        page["worlds"][world] = summary
        write_json(places.results / "summary.json", page)
        notes = {}
        for name in page["worlds"]:
            path = notes_path(args, name)
            notes[name] = path.read_text() if path.is_file() else None
        (places.docs / "results.md").write_text(markdown(page, notes))
    if plots:
        (places.results / world).mkdir(parents=True, exist_ok=True)
        plot(summary, places.results / world)
    return summary


# -- timing a few steps per arm -------------------------------------------------------------


def cpu_seconds(services: Services) -> float:
    """CPU time used so far by this process and the stack's services (from /proc on Linux)."""
    total = time.process_time()
    if services.stack is not None and hasattr(os, "sysconf"):
        tick = os.sysconf("SC_CLK_TCK")
        for child in services.stack.children.values():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def run_estimate(args: argparse.Namespace, places: Places, budget: Budget, arms: list[Arm]) -> int:
    """Time ``--estimate-steps`` real steps (plus one evaluation on eval and one on val) per
    arm and extrapolate the whole experiment linearly in the number of steps.

    Two figures: the wall time at the load measured now, and the wall time with the CPU to
    itself, where each arm's times are scaled by the CPU its runs used (trainer, gateway and
    verifier together) per second of wall time, when that is below 1 (a conservative reading
    of a quiet machine: the trainer and the services never overlapping). Each prints the
    largest step count that fits ``--budget-minutes``.
    """
    k = args.estimate_steps
    probe = Budget(
        k, budget.batch_size, budget.lrs[:1], budget.seeds[:1], 1, budget.max_new_tokens,
        budget.device, budget.extra,
    )  # fmt: skip
    estimate_places = Places(
        places.world, places.recipe, places.runs / "estimate", places.docs, places.eval_rows,
        places.val_rows,
    )  # fmt: skip
    if estimate_places.runs.exists():
        shutil.rmtree(estimate_places.runs)  # timings are of fresh runs, never of reused ones
    services = Services(estimate_places)
    rows: dict[str, dict[str, float]] = {}
    fixed: dict[str, float] = {}
    try:
        if any(a.method in ("omniopd", "sft") for a in arms):
            t0 = time.monotonic()
            services.up()  # started before any timing: its start-up is counted once, here
            fixed["stack start"] = time.monotonic() - t0
        t0 = time.monotonic()
        evaluate_model(
            places.world.student, places.eval_rows, budget=budget, seed=budget.seeds[0],
            sampled=True,
        )  # fmt: skip
        fixed["student eval (per seed)"] = time.monotonic() - t0
        t0 = time.monotonic()
        for path in (places.world.teacher, places.world.teacher_char):
            evaluate_model(path, places.eval_rows, budget=budget, seed=0, sampled=True)
        fixed["teacher evals"] = time.monotonic() - t0
        for i, arm in enumerate(arms):
            if arm.method is None:
                continue
            # A seed of its own per arm: no two arms time the same rollouts.
            spec = RunSpec(arm, budget.lrs[0], 1000 + i, k, k, k, sweep=True)
            say(f"timing {arm.name}: {k} steps, one evaluation on eval and one on val")
            t0, cpu0 = time.monotonic(), cpu_seconds(services)
            result = train_run(spec, estimate_places, probe, services)
            total, cpu = time.monotonic() - t0, cpu_seconds(services) - cpu0
            metrics = read_metrics(spec.folder(estimate_places, probe) / "metrics.jsonl")
            steps = [r["time_step_s"] for r in metrics]
            rows[arm.name] = {
                "step_s": statistics.mean(steps[1:]) if len(steps) > 1 else steps[0],
                "first_step_s": steps[0],
                "eval_s": result["eval_s"],
                "val_s": result["val_s"],
                "overhead_s": max(0.0, total - sum(steps) - result["eval_s"] - result["val_s"]),
                "cpu_per_wall": cpu / total,
            }
    finally:
        services.stop()

    n_lr, n_seed, evals = len(budget.lrs), len(budget.seeds), budget.evals
    runs = n_lr + n_seed - 1
    fixed_s = sum(fixed.get(n, 0.0) for n in ("stack start", "teacher evals"))
    fixed_s += n_seed * fixed.get("student eval (per seed)", 0.0)

    def minutes(steps: int, quiet: bool) -> dict[str, float]:
        per_arm = {}
        for name, r in rows.items():
            scale = min(1.0, r["cpu_per_wall"]) if quiet else 1.0
            run_s = r["overhead_s"] + steps * r["step_s"] + evals * r["eval_s"]
            per_arm[name] = scale * (runs * run_s + n_lr * r["val_s"]) / 60
        return per_arm

    def fits(quiet: bool) -> int:
        base = fixed_s / 60 + sum(minutes(0, quiet).values())
        per_step = sum(minutes(1, quiet).values()) - sum(minutes(0, quiet).values())
        return max(0, math.floor((args.budget_minutes - base) / per_step)) if per_step else 0

    now, quiet = minutes(budget.steps, False), minutes(budget.steps, True)
    total_now, total_quiet = fixed_s / 60 + sum(now.values()), fixed_s / 60 + sum(quiet.values())
    print(
        f"{'arm':<24}{'step s':>8}{'1st step':>9}{'eval s':>8}{'val s':>7}{'start s':>8}"
        f"{'cpu/wall':>9}{'runs':>6}{'min now':>9}{'min quiet':>10}"
    )
    for name, r in rows.items():
        print(
            f"{name:<24}{r['step_s']:>8.2f}{r['first_step_s']:>9.2f}{r['eval_s']:>8.1f}"
            f"{r['val_s']:>7.1f}{r['overhead_s']:>8.1f}{r['cpu_per_wall']:>9.2f}{runs:>6}"
            f"{now[name]:>9.1f}{quiet[name]:>10.1f}"
        )
    for name, value in fixed.items():
        print(f"{name:<24}{value:>8.1f} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    plan = (
        f"{budget.steps} steps x {budget.batch_size} prompts, {n_lr} learning rates, "
        f"{n_seed} seeds ({len(rows) * runs} training runs), {evals} evaluations per run"
    )
    print(
        f"whole experiment, {plan}: about {total_now:.0f} min at the load measured now "
        f"(load average {load:.1f} on {os.cpu_count()} cores), about {total_quiet:.0f} min "
        "with the CPU to itself"
    )
    print(
        f"largest step count that fits {args.budget_minutes:g} min: {fits(False)} at this "
        f"load, {fits(True)} with the CPU to itself"
    )
    print(
        json.dumps(
            {
                "steps": budget.steps,
                "minutes_now": round(total_now, 1),
                "minutes_quiet": round(total_quiet, 1),
                "budget_minutes": args.budget_minutes,
                "fits_steps_now": fits(False),
                "fits_steps_quiet": fits(True),
                "load_average": load,
                "per_arm": rows,
                "fixed_s": fixed,
            }
        )
    )
    return 0


# -- the command ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python experiments/toy_distill.py",
        description="OmniOPD against SFT, GRPO and white-box OPD on the toy world, with "
        "ablations: every arm the same student, data, updates and learning-rate sweep. "
        "Resumable: rerun the same command to continue. Flags after -- go to every "
        "training run's omniopd-train.",
    )
    p.add_argument(
        "--world",
        default="arith",
        help="arith or chain (docs/toy.md: that world, built and cached on first use), or a toy"
        " world's folder (default arith)",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs/toy_distill"),
        help="training runs and cached evaluations (default runs/toy_distill)",
    )
    p.add_argument(
        "--docs",
        type=Path,
        default=Path("docs"),
        help="writes DOCS/results.md and DOCS/results/ (default docs)",
    )
    p.add_argument(
        "--notes",
        type=Path,
        default=Path("experiments/notes/{world}.md"),
        help="markdown for each world's 'what the numbers show', if the file exists; {world} "
        "stands for the world's name (default experiments/notes/{world}.md)",
    )
    p.add_argument(
        "--arms",
        nargs="+",
        choices=(*ARM_NAMES, *ALIASES, "all"),
        metavar="ARM",
        help=f"only these arms, or all (default: {' '.join(DEFAULT_ARMS)}; the others: "
        f"{' '.join(a for a in ARM_NAMES if a not in DEFAULT_ARMS)}; "
        + ", ".join(f"{k} is {v}" for k, v in ALIASES.items())
        + ")",
    )
    budget = p.add_argument_group("the budget, the same for every arm")
    budget.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"student updates per run (default {DEFAULT_STEPS}: the whole experiment then fits "
        "90 minutes on an otherwise idle 2-core CPU; --estimate checks it here and now)",
    )
    budget.add_argument("--batch-size", type=int, default=16, help="prompts per update")
    budget.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=[3e-5, 1e-4, 3e-4],
        help="learning rates swept on val (default 3e-5 1e-4 3e-4)",
    )
    budget.add_argument(
        "--lr-schedule",
        choices=("constant", "linear", "cosine"),
        default="linear",
        help="every run's learning-rate schedule (default linear: decay to 0 at the last step)",
    )
    budget.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds per arm; the first also runs the sweep (default 0 1 2)",
    )
    budget.add_argument(
        "--evals",
        type=int,
        default=5,
        help="held-out evaluations per run, evenly spaced (default 5)",
    )
    budget.add_argument(
        "--max-new-tokens",
        type=int,
        help="answer length limit (default: 40 on arith, 128 on chain, whose answers run to 107)",
    )
    budget.add_argument("--eval-limit", type=int, help="first N eval rows only (default all)")
    budget.add_argument("--val-limit", type=int, help="first N val rows only (default all)")
    budget.add_argument("--device", default="cpu", help="torch device of the training runs")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="time --estimate-steps real steps per arm, print the whole run's time",
    )
    p.add_argument("--estimate-steps", type=int, default=6, help="steps per arm when timing")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=90.0,
        help="--estimate says how many steps fit this (default 90)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        help="console log level of the libraries (each run's train.log has INFO)",
    )
    return p


class _Quiet(logging.Filter):
    """The console shows warnings and errors from the libraries; train.log keeps everything."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def configure(level: str) -> None:
    from omniopd.log import configure_logging

    configure_logging("INFO")
    console = logging.getLogger().handlers[0]
    console.addFilter(_Quiet(logging.getLevelName(level.upper())))


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def resolve_world(name_or_folder: str):
    """The toy world named ``arith`` or ``chain`` (built and cached on first use), or the one
    in a folder."""
    import torch

    torch.set_num_threads(1)
    from omniopd.toy import ToyWorld, ensure_toy_world
    from omniopd.toy.recipe import RECIPES

    if name_or_folder in RECIPES:
        say(f"the {name_or_folder} toy world (built and cached on first use: minutes)")
        return ensure_toy_world(RECIPES[name_or_folder])
    return ToyWorld.at(Path(name_or_folder))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser().parse_args(argv)
    args.argv = [*argv, *(["--", *extra] if extra else [])]
    os.environ.update({**ONE_THREAD, **OFFLINE})
    configure(args.log_level)
    world = resolve_world(args.world)
    if args.max_new_tokens is None:
        args.max_new_tokens = ANSWER_TOKENS[world.manifest["recipe"].get("world", "arith")]
    for name in ("steps", "batch_size", "evals", "max_new_tokens", "estimate_steps"):
        if getattr(args, name) < 1:
            parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.lrs)) != len(args.lrs):
        parser().error("--seeds and --lrs must not repeat a value")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    budget = Budget(
        steps=args.steps,
        batch_size=args.batch_size,
        lrs=tuple(args.lrs),
        seeds=tuple(args.seeds),
        evals=args.evals,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        extra=check_extra(extra),
        lr_schedule=args.lr_schedule,
    )
    if len(budget.seeds) < 3 and not args.estimate:
        say(f"note: {len(budget.seeds)} seed(s); the experiment asks for at least 3")

    recipe = world.manifest.get("recipe_hash", "unknown")
    # One folder per world: both worlds' experiments can run at once without sharing a stack.
    runs = args.runs_dir.resolve() / world.manifest["recipe"].get("world", "arith")
    places = Places(
        world=world,
        recipe=recipe,
        runs=runs,
        docs=args.docs,
        eval_rows=limited_copy(world.eval, args.eval_limit, runs / "data"),
        val_rows=limited_copy(world.val, args.val_limit, runs / "data"),
    )
    names = DEFAULT_ARMS if args.arms is None else {ALIASES.get(a, a) for a in args.arms}
    arms = [a for a in ARMS if "all" in names or a.name in names]
    if args.estimate:
        return run_estimate(args, places, budget, arms)
    return run_experiment(args, places, budget, arms)


if __name__ == "__main__":
    sys.exit(main())
