"""summary.json and results.md written from every finished run, one writer at a time."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from distill.arms import Arm, Budget
from distill.page import markdown
from distill.places import Places, Services, write_json
from distill.plots import plot
from distill.summary import PRICE_PER_MILLION, collect, experiment_command
from omniopd.paths import locked

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
    # The lock beside the worlds' runs folders (never in docs/): both worlds share the page.
    with locked(places.runs.parent / "results.lock"):
        page = read_page(places)
        page["definitions"] = DEFINITIONS
        page["worlds"][world] = summary
        write_json(places.results / "summary.json", page)
        notes = {}
        for name in ["page", *page["worlds"]]:  # "page": what stands above both worlds
            path = notes_path(args, name)
            notes[name] = path.read_text() if path.is_file() else None
        (places.docs / "results.md").write_text(markdown(page, notes))
    if plots:
        (places.results / world).mkdir(parents=True, exist_ok=True)
        plot(summary, places.results / world)
    return summary
