"""The plan: the learning-rate sweep and the seeds of each arm, run in order, resumable."""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from distill.arms import Arm, Budget, log
from distill.places import Places, Services, digest, read_json, say, write_json
from distill.report import write_report
from distill.runs import (
    GATEWAY,
    VERIFIER,
    Interrupted,
    RunSpec,
    check_stack,
    choose_lr,
    evaluate_model,
    fit,
    load_result,
    needs_services,
    resolve,
    run_order,
    seed_specs,
    sweep_specs,
    train_run,
)
from omniopd.toy.recipe import EVAL_MAX_NEW_TOKENS

# -- the plan -------------------------------------------------------------------------------


@dataclass
class Progress:
    total: int
    done: int = 0
    run_seconds: list[float] = field(default_factory=list)
    jobs: int = 1

    def eta(self) -> str:
        if not self.run_seconds:
            return "?"
        left = (self.total - self.done) * statistics.mean(self.run_seconds) / self.jobs
        return f"{left / 60:.0f} min"


def _child_setup() -> None:
    """A run's process under ``--jobs``: one thread, and INFO records reach its train.log."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.INFO)


@contextlib.contextmanager
def run_pool(jobs: int) -> Iterator[Executor | None]:
    """``jobs`` processes for training runs (None: runs train in this process). On the way
    out after Ctrl-C or SIGTERM each child is sent SIGTERM: its run checkpoints after the
    step in flight and stops, as a run in this process does."""
    if jobs <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_child_setup
    )
    try:
        yield pool
    except BaseException:
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def reference_evals(places: Places, budget: Budget) -> dict[str, Any]:
    """The initial student (once per seed: sampled pass@1 depends on it) and both teachers,
    on the eval split; cached in the runs folder."""
    w = places.world
    out: dict[str, Any] = {"student": {}, "teachers": {}}
    limit = budget.max_new_tokens
    # The char teacher spends a token per character, so the same answer takes it more tokens
    # than the bpe models: it gets the limit its band is measured with when the world is built.
    char_limit = max(limit, EVAL_MAX_NEW_TOKENS[places.world_name])
    todo = [("student", w.student, seed, limit) for seed in budget.seeds]
    todo += [
        ("teacher", w.teacher, budget.seeds[0], limit),
        ("teacher-char", w.teacher_char, budget.seeds[0], char_limit),
    ]
    for name, path, seed, max_new_tokens in todo:
        key = digest(
            {
                "recipe": places.recipe,
                "rows": places.show(str(places.eval_rows)),
                "max_new_tokens": max_new_tokens,
                "seed": seed,
                "device": budget.device,
            }
        )
        cached = places.runs / "reference" / f"{name}-seed{seed}-{key}.json"
        if cached.is_file():
            result = read_json(cached)
        else:
            say(f"evaluating {name} (seed {seed}) on {places.eval_rows.name}")
            result = evaluate_model(
                path,
                places.eval_rows,
                budget=budget,
                seed=seed,
                sampled=True,
                max_new_tokens=max_new_tokens,
            )
            write_json(cached, result)
        result["max_new_tokens"] = max_new_tokens
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
                load_result(s, places, budget) is not None for s in seed_specs(resolved, lr, budget)
            )
    validate_configs(places, budget, trained)
    progress = Progress(total=n_runs, done=finished, jobs=args.jobs)
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
        with run_pool(args.jobs) as pool:
            for arm in trained:
                try:
                    if (resolved := resolve(arm, places, budget)) is None:
                        raise RuntimeError(
                            f"sized from {arm.matches}'s and sft's runs, which are unfinished "
                            f"(run them first: --arms sft {arm.matches} {arm.name})"
                        )
                    trained_now = run_arm(resolved, places, budget, services, progress, pool)
                except (Interrupted, KeyboardInterrupt):
                    raise
                except Exception as err:  # one broken arm must not cost the others theirs
                    log.exception("arm %s failed", arm.name)
                    failures.append(f"{arm.name}: {type(err).__name__}: {err}")
                    say(f"arm {arm.name} FAILED ({err}); going on with the others")
                    trained_now = True
                if trained_now:  # the page and summary so far (the plots come at the end)
                    write_report(
                        args, places, budget, arms, references, started, services, plots=False
                    )
        write_report(args, places, budget, arms, references, started, services, plots=True)
    except (Interrupted, KeyboardInterrupt) as err:
        say(
            f"interrupted ({err or 'Ctrl-C'}): finished runs are kept, the runs in flight "
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
    arm: Arm,
    places: Places,
    budget: Budget,
    services: Services,
    progress: Progress,
    pool: Executor | None = None,
) -> bool:
    """The arm's sweep, then its other seeds (each batch ``--jobs`` runs at a time); whether
    any run was trained now."""
    trained = False

    def started(spec: RunSpec) -> None:
        nonlocal trained
        trained = True
        progress.done += 1
        say(
            f"[{progress.done}/{progress.total}] {arm.name}: lr {spec.lr:g}, seed {spec.seed}"
            f"{' (sweep)' if spec.sweep else ''}, {spec.steps} steps; about "
            f"{progress.eta()} left"
        )

    def finished(spec: RunSpec, result: dict[str, Any], seconds: float) -> None:
        progress.run_seconds.append(seconds)
        val = result["val"]["accuracy_greedy"] if result["val"] else None
        say(
            f"    {arm.name} lr {spec.lr:g} seed {spec.seed}: held-out "
            f"{result['final'].get('accuracy_greedy', float('nan')):.3f}"
            + (f", val {val:.3f}" if val is not None else "")
            + f" ({seconds:.0f} s)"
        )

    def batch(specs: list[RunSpec]) -> list[dict[str, Any]]:
        results = {s: load_result(s, places, budget) for s in specs}
        todo = [s for s in specs if results[s] is None]
        if pool is None:
            for spec in todo:
                started(spec)
                t0 = time.monotonic()
                results[spec] = train_run(spec, places, budget, services)
                finished(spec, results[spec], time.monotonic() - t0)
        elif todo:
            gateway, verifier = (
                services.up() if any(needs_services(s) for s in todo) else (GATEWAY, VERIFIER)
            )
            futures = {}
            for spec in todo:
                started(spec)
                futures[pool.submit(fit, spec, places, budget, gateway, verifier)] = spec
            for future in as_completed(futures):
                spec = futures[future]
                results[spec] = result = future.result()
                check_stack(spec, places, budget, services)
                finished(spec, result, result["run_s"] + result["val_s"])  # its own seconds
        return [results[s] for s in specs]  # type: ignore[misc]

    lr = choose_lr(batch(sweep_specs(arm, budget)))
    if trained and len(budget.lrs) > 1:
        say(f"    {arm.name}: learning rate {lr:g} (best on val)")
    batch(seed_specs(arm, lr, budget))
    return trained
