"""One model of the toy world, trained and measured in a process of its own.

``python -m omniopd.toy.worker --name teacher --root DIR --spec JSON --max-length 96
--max-new-tokens 48 --seed 0 [--threads-file PATH]``
loads the tokenizer already saved in ``DIR/<model folder>``, trains a fresh model on
``DIR/data/train.jsonl`` (stopping early on val accuracy if the spec says so), saves it beside
the tokenizer, measures it on ``DIR/data/eval.jsonl``, and prints its report as one JSON line.
:mod:`omniopd.toy.build` runs one per model.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from omniopd.evaluation import evaluate
from omniopd.log import add_logging_args, configure_from_args
from omniopd.toy.recipe import ModelSpec
from omniopd.toy.task import read_jsonl
from omniopd.toy.train import train
from omniopd.toy.world import MODEL_DIRS, ToyWorld, make_model, n_params

log = logging.getLogger("omniopd.toy.build")

EVAL_BATCH_SIZE = 250


class ThreadShare:
    """The CPU threads this worker may use, read between training steps from the file the
    builder rewrites when another worker finishes (:func:`omniopd.toy.build.run_workers`).

    More threads are kept only if they pay: the median time of the ``window`` steps after
    taking them (a median, as a val check inside the window is one long step) must beat that
    of the ``window`` steps before by ``min_gain``, else the worker goes back to the count it
    had and does not try it again (on a machine busy with other work, extra OpenMP threads
    wait on each other and make steps slower). The count changes only between steps; on the
    chain world's shapes, weights trained with a switch from one thread to two mid-run were
    bit-identical to one thread throughout (docs/toy.md), so a hand-off changes when a build
    ends, not what it builds.
    """

    def __init__(
        self,
        path: Path | None,
        window: int = 30,
        min_gain: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.path, self.window, self.min_gain, self.clock = path, window, min_gain, clock
        self.times: list[float] = []  # durations of the steps since the last change
        self.last = clock()
        self.before: float | None = None  # median step time before a trial of more threads
        self.refused: int | None = None  # a count that was tried and did not pay

    def offered(self) -> int | None:
        try:
            return int(self.path.read_text()) if self.path else None
        except (OSError, ValueError):
            return None

    def take_all(self) -> None:
        """Every thread offered, at once (for work not timed against anything, as the final
        measurement); a count that did not pay in training is not taken."""
        offer = self.offered()
        if offer is not None and offer > torch.get_num_threads() and offer != self.refused:
            torch.set_num_threads(offer)

    def __call__(self, steps_done: int) -> None:
        now = self.clock()
        self.times.append(now - self.last)
        self.last = now
        if len(self.times) < self.window:
            return
        median = statistics.median(self.times[-self.window :])
        current = torch.get_num_threads()
        if self.before is not None:  # a trial ends
            if median > self.before * (1.0 - self.min_gain):
                log.info("%d threads did not pay (%.3f s/step against %.3f); back to %d",
                         current, median, self.before, current - 1)  # fmt: skip
                self.refused = current
                torch.set_num_threads(current - 1)
            self.before, self.times = None, []
            return
        offer = self.offered()
        if offer is not None and offer > current and current + 1 != self.refused:
            log.info("step %d: taking a thread freed by another worker (%d -> %d)",
                     steps_done, current, current + 1)  # fmt: skip
            torch.set_num_threads(current + 1)
            self.before, self.times = median, []


def train_one(
    name: str,
    spec: ModelSpec,
    max_length: int,
    root: Path,
    seed: int,
    max_new_tokens: int,
    threads_file: Path | None = None,
) -> dict[str, Any]:
    """Load the tokenizer saved in ``root/<folder>``, train a fresh model on the training split,
    save it beside the tokenizer, and measure it on the eval split. Returns its report."""
    hf_logging.disable_progress_bar()
    world = ToyWorld.at(root)
    out = root / MODEL_DIRS[name]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = make_model(spec, tokenizer, max_length)
    log.info("%s: training %d parameters for up to %d steps", name, n_params(model), spec.steps)
    val_rows = list(read_jsonl(world.val))
    checks: list[dict[str, float]] = []

    def val_reached_target(steps_done: int) -> bool:
        acc = evaluate(
            model,
            tokenizer,
            val_rows,
            max_new_tokens=max_new_tokens,
            batch_size=EVAL_BATCH_SIZE,
            sampled=False,
        ).accuracy_greedy
        checks.append({"step": steps_done, "val_accuracy_greedy": acc})
        log.info("%s: step %d, val greedy accuracy %.3f", name, steps_done, acc)
        return spec.stop_at is not None and acc >= spec.stop_at

    rows = list(read_jsonl(world.train))
    stop = val_reached_target if spec.stop_at is not None else None
    share = ThreadShare(threads_file)
    report = train(model, tokenizer, rows, spec, name=name, should_stop=stop, after_step=share)
    share.take_all()
    model.save_pretrained(out)
    result = evaluate(
        model,
        tokenizer,
        list(read_jsonl(world.eval)),
        max_new_tokens=max_new_tokens,
        batch_size=EVAL_BATCH_SIZE,
        seed=seed,
    )
    log.info(
        "%s: greedy %.3f, sampled %.3f after %.0f s of training",
        name,
        result.accuracy_greedy,
        result.accuracy_sampled,
        report.seconds,
    )
    stopped = (
        f", stopped at the first check where val greedy accuracy reached {spec.stop_at}"
        if spec.stop_at is not None
        else ""
    )
    return {
        "how": (
            f"Llama-style decoder, random init (seed {spec.seed}), then {report.steps} AdamW "
            f"steps (of a {spec.steps}-step schedule) of {spec.batch_size} rows of "
            f"data/train.jsonl, loss on answer tokens only{stopped}"
        ),
        "val_checks": checks,
        "tokenizer": spec.tokenizer,
        "params": n_params(model),
        "spec": asdict(spec),
        "train": asdict(report),
        "eval": result.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omniopd.toy.worker", description=__doc__)
    p.add_argument("--name", required=True, choices=list(MODEL_DIRS))
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--spec", required=True, help="the ModelSpec as JSON")
    p.add_argument("--max-length", required=True, type=int)
    p.add_argument(
        "--max-new-tokens", required=True, type=int, help="answer limit of the evaluations"
    )
    p.add_argument("--seed", required=True, type=int, help="seed of the sampled evaluation")
    p.add_argument("--threads-file", type=Path, help="file holding the threads this worker may use")
    add_logging_args(p)
    args = p.parse_args(argv)
    configure_from_args(args)
    spec = ModelSpec(**json.loads(args.spec))
    report = train_one(
        args.name,
        spec,
        args.max_length,
        args.root,
        args.seed,
        args.max_new_tokens,
        args.threads_file,
    )
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
