"""``make demo`` (``python -m omniopd.demo``): OmniOPD end to end on the toy world, on a CPU.

1. the toy world, built and cached if it is not yet (``omniopd.toy.ensure_toy_world``);
2. the student and the teacher evaluated on the held-out split (``omniopd.evaluation``);
3. ``omniopd-stack``: the gateway (hf backend serving the toy teacher as a black box), the
   verifier, and a Redis when ``redis-server`` is on PATH;
4. ``omniopd-train --method omniopd`` for a fixed budget (300 updates of 16 prompts, the
   verifier's ``lexical`` metric, a linearly decaying learning rate), evaluating as it goes;
5. a table (accuracy before and after, the teacher's for reference, teacher tokens, wall time),
   a plot of reward and accuracy over the steps, and as the last line one JSON object.

The services stop on the way out, also on Ctrl-C, SIGTERM or a failure (a second Ctrl-C kills
them at once). Every figure comes from this run; docs/demo.md says what to expect and how it was
measured. Flags after ``--`` go to
``omniopd-train`` unchanged (``python -m omniopd.demo -- --metric hybrid``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omniopd.log import add_logging_args, configure_from_args
from omniopd.processes import console_script
from omniopd.stack import Stack, StackConfig

log = logging.getLogger("omniopd.demo")

# One thread per process: on a small shared CPU several single-threaded processes (trainer,
# gateway, verifier) lose far less to contention than OpenMP threads spinning on busy cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TRAINER_STOP_S = 60.0  # after Ctrl-C the trainer finishes its step and saves; then SIGKILL


@dataclass(frozen=True)
class Accuracy:
    greedy: float
    sampled: float | None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m omniopd.demo",
        description="Start the stack, distil the toy teacher into the toy student with OmniOPD, "
        "and report held-out accuracy before and after. Flags after -- go to omniopd-train.",
    )
    p.add_argument("--world", type=Path, help="a toy world folder (default: the cached one)")
    p.add_argument("--output-dir", type=Path, help="default runs/demo/<date-time>")
    # The budget and settings measured in docs/demo.md: a rise well beyond seed-to-seed noise
    # in about 4 minutes on 2 CPU cores.
    p.add_argument("--steps", type=int, default=300, help="student updates (default 300)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per step (default 16)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument(
        "--lr-schedule",
        default="linear",
        help="constant, linear or cosine decay to 0 at the last step (default linear: a constant "
        "rate leaves the accuracy swinging by several points from one evaluation to the next)",
    )
    p.add_argument(
        "--metric",
        default="lexical",
        help="the verifier's similarity: lexical (default; character n-grams suit arithmetic "
        "and cost a sixth of the verifier time of embedding), embedding or hybrid",
    )
    p.add_argument("--seed", type=int, default=0, help="data order, sampling, forks")
    p.add_argument("--eval-every", type=int, default=50, help="held-out evaluation every N steps")
    p.add_argument(
        "--eval-limit", type=int, help="evaluate on the first N held-out rows (default: all)"
    )
    p.add_argument("--max-new-tokens", type=int, default=40, help="response length limit")
    p.add_argument("--no-redis", action="store_true", help="never start a Redis")
    add_logging_args(p)
    return p


def say(message: str) -> None:
    """Progress goes to stderr; stdout carries the table and the final JSON line only."""
    print(f"demo: {message}", file=sys.stderr, flush=True)


def eval_rows(world, limit: int | None, out: Path) -> Path:
    """The held-out rows the whole demo evaluates on (a copy of the first ``limit`` rows)."""
    if limit is None:
        return world.eval
    path = out / f"eval-{limit}.jsonl"
    path.write_text("".join(world.eval.read_text().splitlines(keepends=True)[:limit]))
    return path


def evaluate_model(path: Path, rows_path: Path, args: argparse.Namespace) -> Accuracy:
    """Greedy accuracy and sampled pass@1 at τ = 1, as the trainer evaluates (same settings)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.evaluation import evaluate

    torch.set_num_threads(1)  # the services start beside it (see ONE_THREAD)
    from omniopd.answers import read_jsonl

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = evaluate(
        model,
        tokenizer,
        list(read_jsonl(rows_path)),
        max_new_tokens=args.max_new_tokens,
        batch_size=64,  # the trainer's eval_batch_size
        temperature=1.0,
        seed=args.seed,
    )
    return Accuracy(result.accuracy_greedy, result.accuracy_sampled)


def teachers_yaml(world, out: Path) -> Path:
    path = out / "teachers.yaml"
    teacher = {"name": "toy", "provider": "hf", "model": str(world.teacher), "device": "cpu"}
    path.write_text(yaml.safe_dump({"teachers": [{**teacher, "max_n": 8, "max_tokens": 64}]}))
    return path


def train_command(world, stack: Stack, rows: Path, out: Path, args, extra: list[str]) -> list[str]:
    return [
        *console_script("omniopd-train", "omniopd.trainer.cli"),
        "--method", "omniopd",
        "--student", str(world.student),
        "--dataset", str(world.train),
        "--eval-dataset", str(rows),
        "--gateway", str(stack.gateway),
        "--teacher", "toy",
        "--verifier", str(stack.verifier),
        "--output-dir", str(out / "run"),
        "--steps", str(args.steps),
        "--batch-size", str(args.batch_size),
        "--lr", str(args.lr),
        "--lr-schedule", args.lr_schedule,
        "--metric", args.metric,
        "--seed", str(args.seed),
        "--max-new-tokens", str(args.max_new_tokens),
        "--eval-every", str(args.eval_every or args.steps),
        "--save-every", "0",
        "--keep-checkpoints", "1",
        "--device", "cpu",
        *extra,
    ]  # fmt: skip


def run_trainer(command: list[str], stack: Stack, env: dict[str, str], signals: Interrupts) -> None:
    """Run the trainer in its own process group (a Ctrl-C reaches the demo, which passes it
    on), watching the services: a service that dies ends the run with its reason."""
    proc = subprocess.Popen(command, env=env, process_group=0)
    signals.trainer = proc
    try:
        while proc.poll() is None:
            stack.check()
            time.sleep(0.5)
    except BaseException:
        if proc.poll() is None:
            say(
                f"stopping the trainer: it finishes its step and saves a checkpoint "
                f"(at most {TRAINER_STOP_S:.0f} s; Ctrl-C again to kill everything now)"
            )
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=TRAINER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(
            f"omniopd-train exited with code {proc.returncode} (its output is above)"
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(rows: list[dict[str, Any]], before: Accuracy, teacher: Accuracy, path: Path) -> None:
    """Reward per step (and its running mean), held-out greedy accuracy at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    scored = [(r["step"], r["reward_mean"]) for r in rows if r.get("reward_mean") is not None]
    if scored:
        steps, rewards = zip(*scored, strict=True)
        window = max(1, len(rewards) // 10)
        running = [
            sum(rewards[max(0, i - window + 1) : i + 1])
            / len(rewards[max(0, i - window + 1) : i + 1])
            for i in range(len(rewards))
        ]
        left.plot(steps, rewards, ".", alpha=0.35, label="step")
        left.plot(steps, running, "-", label=f"mean of {window}")
        left.legend()
    left.set(xlabel="student update", ylabel="mean draft reward (p_T)", title="reward")
    evals = [(0, before.greedy)] + [
        (r["step"], r["eval_accuracy_greedy"])
        for r in rows
        if r.get("eval_accuracy_greedy") is not None
    ]
    right.plot(*zip(*evals, strict=True), "o-", label="student")
    right.axhline(teacher.greedy, linestyle="--", color="gray", label="teacher")
    right.set(xlabel="student update", ylabel="held-out accuracy (greedy)", title="accuracy")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(result: dict[str, Any], sampled: dict[str, float | None]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:5.1f}%"

    rows = [
        ("student before", result["accuracy_before"], sampled["before"]),
        ("student after", result["accuracy_after"], sampled["after"]),
        ("teacher (reference)", result["teacher_accuracy"], sampled["teacher"]),
    ]
    lines = [f"{'held-out accuracy':<22}{'greedy':>8}{'sampled':>9}"]
    lines += [f"{name:<22}{pct(g):>8}{pct(s):>9}" for name, g, s in rows]
    change = 100 * (result["accuracy_after"] - result["accuracy_before"])
    lines += [
        f"{'change':<22}{change:+7.1f} points",
        f"{'teacher tokens used':<22}{result['teacher_tokens']:>8,}",
        f"{'wall time':<22}{result['wall_s']:>7.0f} s (training {result['train_s']:.0f} s)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, extra: list[str], signals: Interrupts) -> dict[str, Any]:
    start = time.monotonic()
    out = args.output_dir or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ONE_THREAD, **OFFLINE}

    say("[1/5] the toy world (built and cached on first use: about 5 minutes)")
    if args.world is not None:
        from omniopd.toy import ToyWorld

        world = ToyWorld.at(args.world)
    else:
        from omniopd.toy import ensure_toy_world

        world = ensure_toy_world()
    say(f"      {world.root}")
    rows = eval_rows(world, args.eval_limit, out)

    config = StackConfig(
        teachers=teachers_yaml(world, out),
        redis=False if args.no_redis else None,
        verifier_device="cpu",
        env={**ONE_THREAD, **OFFLINE},
        log_dir=out / "logs",
    )
    stack = Stack(config)
    signals.stack = stack
    try:
        say(f"[2/5] starting the stack in the background (service logs in {out / 'logs'})")
        stack.launch()
        say(f"[3/5] evaluating the student and the teacher on {rows}")
        before = evaluate_model(world.student, rows, args)
        teacher = evaluate_model(world.teacher, rows, args)
        say(f"      student {before.greedy:.3f}, teacher {teacher.greedy:.3f} (greedy)")
        stack.wait_ready()
        say(f"      gateway {stack.gateway}, verifier {stack.verifier}, redis {stack.redis_url}")
        say(
            f"[4/5] omniopd-train: {args.steps} steps of {args.batch_size} prompts, lr {args.lr:g} "
            f"({args.lr_schedule}), metric {args.metric}; the held-out set every "
            f"{args.eval_every or args.steps} steps"
        )
        command = train_command(world, stack, rows, out, args, extra)
        train_start = time.monotonic()
        run_trainer(command, stack, env, signals)
        train_s = time.monotonic() - train_start
    finally:
        say("[5/5] stopping the stack")
        stack.stop()

    metrics_path = out / "run" / "metrics.jsonl"
    metrics = read_metrics(metrics_path)
    last = metrics[-1]
    plot_path = out / "demo.png"
    plot(metrics, before, teacher, plot_path)
    result = {
        "accuracy_before": before.greedy,
        "accuracy_after": last["eval_accuracy_greedy"],
        "teacher_accuracy": teacher.greedy,
        "teacher_tokens": int(sum(r.get("teacher_tokens") or 0 for r in metrics)),
        "wall_s": round(time.monotonic() - start, 1),
        "train_s": round(train_s, 1),
        "steps": last["step"],
        "seed": args.seed,
        "metrics": str(metrics_path),
        "plot": str(plot_path),
    }
    sampled = {
        "before": before.sampled,
        "after": last.get("eval_accuracy_sampled"),
        "teacher": teacher.sampled,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result, sampled))
    print(f"metrics: {metrics_path}")
    print(f"plot:    {plot_path}")
    print(json.dumps(result), flush=True)
    return result


class Interrupts:
    """Ctrl-C and SIGTERM. The first raises ``KeyboardInterrupt`` in the demo, which then stops
    the trainer (it saves first) and the services in order. A second one, while that runs,
    kills the trainer and the services at once and exits with code 130."""

    def __init__(self) -> None:
        self.count = 0
        self.stack: Stack | None = None
        self.trainer: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum: int, _frame: object) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            raise KeyboardInterrupt(name)
        say(f"{name} again: killing the trainer and the services now")
        procs = [self.trainer] if self.trainer is not None else []
        if self.stack is not None:
            procs += [child.proc for child in self.stack.children.values()]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        os._exit(130)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser().parse_args(argv)
    configure_from_args(args)
    # SIGTERM unwinds like Ctrl-C, so the trainer and the services are stopped on the way out.
    signals = Interrupts()
    signals.install()
    try:
        run(args, extra, signals)
    except KeyboardInterrupt:
        say("interrupted; the services are stopped")
        return 130
    except Exception as err:
        say(f"failed: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
