"""``--estimate``: time a few real steps per arm and extrapolate the whole run."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

from distill.arms import Arm, Budget
from distill.places import Places, Services, say
from distill.runs import RunSpec, evaluate_model, read_metrics, train_run

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
