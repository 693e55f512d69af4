"""The headline experiment: OmniOPD against SFT, GRPO and white-box OPD on a toy world.

One command runs every arm of the comparison on one world (``--world arith`` or ``chain``,
docs/toy.md) with the same student, the same data and the same number of student updates, the
same learning-rate sweep for every arm, and writes that world's section of the results page,
its entry of the JSON summary and its plots::

    .venv/bin/python experiments/toy_distill.py --world chain              # the experiment
    .venv/bin/python experiments/toy_distill.py --world chain --estimate   # time it first

By default: the arms of ``DEFAULT_ARMS`` (baselines, both objectives, the published
objective's agreements and its two extensions, teacher-char, random audits, and SFT given as
many teacher tokens as the named arm), 100 updates of 16 prompts per run, learning rates 3e-5,
1e-4 and 3e-4 with a linear decay, swept on val, seeds 0, 1 and 2; ``--estimate`` says how long
that takes here, before you start.

What it does, in order (the code, by concern, is in ``experiments/distill/``):

1. the toy world (built and cached on first use; ``--world`` also takes a folder);
2. ``omniopd-stack`` (the gateway serving the toy teacher as ``toy`` and teacher-char as
   ``toy-char``, both ``hf`` backends, and the verifier), started the first time a run needs it
   (``places.py``);
3. the initial student and both teachers evaluated on the held-out eval split (``plan.py``);
4. per arm, the learning-rate sweep: one run per learning rate (first seed), each final model
   evaluated on the **val** split; the learning rate with the best val accuracy is the arm's;
   then the other seeds at that rate (``plan.py``, ``runs.py``);
5. ``--docs``/results.md (one section per world) and ``--docs``/results/summary.json
   (``worlds.<world>``), rewritten after each arm that trained, and the world's PNG plots in
   ``--docs``/results/<world>/ at the end (``summary.py``, ``page.py``, ``plots.py``,
   ``report.py``).

Every training run is ``omniopd-train`` (the same argument parsing and ``train()``, called in
this process to save the start-up of a fresh interpreter per run), into
``--runs-dir/<world>/<arm>/lr<lr>-seed<seed>-<hash>/``, where the hash covers the run's whole
command: change the budget or a flag and the runs are new. A run's ``result.json`` is written
when it has finished; a rerun of the same command skips finished runs and resumes an
interrupted one from its last checkpoint (``--resume``). Ctrl-C stops after the step in
flight; run the same command again to continue. Both worlds' experiments may run at once.

The held-out accuracy reported is greedy accuracy on the eval split at the last step (the
trainer's own evaluation, ``omniopd.evaluation``); the val split only chooses learning rates.
Flags after ``--`` go to every training run's ``omniopd-train`` (never per arm), e.g.
``-- --beta 0.1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from distill.arms import (
    ALIASES,
    ANSWER_TOKENS,
    ARM_NAMES,
    ARMS,
    DEFAULT_ARMS,
    DEFAULT_STEPS,
    OFFLINE,
    ONE_THREAD,
    Budget,
    check_extra,
)
from distill.estimate import run_estimate
from distill.places import Places, limited_copy, say
from distill.plan import run_experiment

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
        "stands for the world's name, and 'page' for what the page says above both worlds "
        "(default experiments/notes/{world}.md)",
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
        "--jobs",
        type=int,
        default=1,
        help="training runs at once, each in a process of its own (an arm's sweep, then its "
        "seeds); 2 on a 2-core machine. The figures do not depend on it (default 1)",
    )
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
    for name in ("steps", "batch_size", "evals", "max_new_tokens", "estimate_steps", "jobs"):
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
