"""The trained toy world: built once per recipe, cached under ``$OMNIOPD_HOME/toy/<hash>/``.

A build writes into a temporary folder beside the cache entry and renames it into place when
every model is saved and measured, so a killed build never leaves a folder that looks complete;
a file lock keeps two processes from building the same recipe at once.

The three models train in parallel child processes (``omniopd.toy.worker``), one CPU thread
each when CPUs are few: on a small shared machine, several single-threaded processes lose far
less to contention than one process whose OpenMP threads wait on each other (measured: 0.2 s
against 1.5 s per training step on 2 busy cores). A worker that finishes hands its threads to
those still running (:func:`run_workers`), so the last model does not train on one core while
the other idles.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omniopd.log import JsonFormatter
from omniopd.paths import locked, make_readable, omniopd_home
from omniopd.toy.recipe import BANDS, EVAL_MAX_NEW_TOKENS, RECIPES, ModelSpec, Recipe
from omniopd.toy.world import MANIFEST, MODEL_DIRS, ToyWorld

log = logging.getLogger("omniopd.toy.build")

# Longest job first, so the short one fills the gap at the end.
TRAIN_ORDER = ("teacher_char", "teacher", "student")


def cache_dir(recipe: Recipe, home: Path | None = None) -> Path:
    return (home or omniopd_home()) / "toy" / recipe.hash()


def is_complete(root: Path) -> bool:
    return (root / MANIFEST).is_file()


def _worker_command(name: str, spec: ModelSpec, recipe: Recipe, root: Path) -> list[str]:
    return [
        sys.executable, "-m", "omniopd.toy.worker",
        "--name", name,
        "--root", str(root),
        "--spec", json.dumps(asdict(spec)),
        "--max-length", str(recipe.max_length),
        "--max-new-tokens", str(EVAL_MAX_NEW_TOKENS[recipe.world]),
        "--seed", str(recipe.data_seed),
    ]  # fmt: skip


def run_workers(commands: dict[str, list[str]], workers: int, threads: int) -> dict[str, Any]:
    """Run each command as a child process, at most ``workers`` at a time, in the given order;
    returns the JSON object each printed last on stdout. A failure stops the others and raises.

    Children (not ``multiprocessing``) so that nothing depends on the caller's ``__main__``
    being importable, and each child's thread count is set before its torch starts. Each child
    gets ``--threads-file PATH`` appended: the file holds the threads it may use, ``threads`` at
    first. When a child ends with nothing left to start, its threads go to the children still
    running (one at a time, to whichever has fewest); ``omniopd.toy.worker`` takes them up
    between training steps and gives them back if its steps do not get faster.
    """
    root = logging.getLogger()
    json_logs = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "OMNIOPD_LOG_LEVEL": logging.getLevelName(root.getEffectiveLevel()),
        "OMNIOPD_LOG_FORMAT": "json" if json_logs else "text",
    }
    pending = list(commands.items())
    running: dict[str, subprocess.Popen[bytes]] = {}
    shares: dict[str, int] = {}
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="omniopd-threads-") as folder:

        def share(name: str, n: int) -> None:
            shares[name] = n
            tmp = Path(folder, f"{name}.tmp")
            tmp.write_text(str(n))
            os.replace(tmp, Path(folder, name))  # a reader never sees a half-written file

        try:
            while pending or running:
                while pending and len(running) < workers:
                    name, command = pending.pop(0)
                    share(name, threads)
                    # Into a file, not a pipe: a pipe read only at the end would fill and
                    # block a child that prints more than its buffer holds.
                    with Path(folder, f"{name}.stdout").open("w") as stdout:
                        running[name] = subprocess.Popen(
                            [*command, "--threads-file", str(Path(folder, name))],
                            env=env,
                            stdout=stdout,
                        )
                time.sleep(0.1)
                for name, proc in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    out = Path(folder, f"{name}.stdout").read_text()
                    if proc.returncode != 0:
                        raise RuntimeError(
                            f"building {name} failed (exit status {proc.returncode}); "
                            "its error is in the log above"
                        )
                    reports[name] = json.loads(out.strip().splitlines()[-1])
                    if not pending:
                        for _ in range(shares[name]):
                            if running:
                                fewest = min(running, key=lambda n: shares[n])
                                share(fewest, shares[fewest] + 1)
        finally:
            for proc in running.values():
                proc.kill()
                proc.wait()
    return reports


def build_world(recipe: Recipe, root: Path, workers: int | None = None) -> dict[str, Any]:
    """Build the whole world into ``root`` (an empty folder) and return its manifest."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from omniopd.toy.world import make_config, make_tokenizers, world_splits, write_splits

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    world = ToyWorld.at(root)
    splits = world_splits(recipe)
    rows = write_splits(world, splits)
    tokenizers = make_tokenizers(recipe, splits)
    for name, folder in MODEL_DIRS.items():
        spec: ModelSpec = getattr(recipe, name)
        try:  # a bad shape fails here, before any worker starts
            make_config(spec, tokenizers[spec.tokenizer], recipe.max_length)
        except Exception as err:
            raise ValueError(f"recipe.{name}: {err}") from err
        tokenizers[spec.tokenizer].save_pretrained(root / folder)
    cpus = len(os.sched_getaffinity(0))
    workers = workers or min(len(TRAIN_ORDER), cpus)
    threads = max(1, cpus // workers)
    log.info(
        "training %d models in %d processes of %d thread(s)", len(TRAIN_ORDER), workers, threads
    )
    commands = {
        name: _worker_command(name, getattr(recipe, name), recipe, root) for name in TRAIN_ORDER
    }
    reports = run_workers(commands, workers, threads)
    models = {name: reports[name] for name in MODEL_DIRS}
    if recipe == RECIPES[recipe.world]:  # the shipped worlds; a recipe of one's own is kept
        check_bands(recipe.world, models)
    manifest = {
        "kind": "trained",
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "rows": rows,
        "vocab_sizes": {k: len(t) for k, t in tokenizers.items()},
        "models": models,
        "build_seconds": round(time.perf_counter() - start, 1),
        "build_host": {
            "cpus": cpus,
            "workers": workers,
            "threads_per_worker": threads,
            "load_average_at_start": round(load_at_start, 2),
            "load_average_at_end": round(os.getloadavg()[0], 2),
            # The weights depend on the CPU's kernels, not only on the recipe: the same recipe
            # built other figures on an AVX2-only machine than on earlier ones (docs/toy.md).
            "cpu": cpu_model(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class BandsMissed(RuntimeError):
    """A built world whose models measure outside the bands its task asks for."""


def check_bands(world: str, models: dict[str, Any]) -> None:
    """Raise :class:`BandsMissed` naming each model whose greedy eval accuracy is outside its
    band in :data:`omniopd.toy.recipe.BANDS`, and by how much. Applied to the shipped recipes
    (:data:`omniopd.toy.recipe.RECIPES`): a recipe of one's own (smaller, for a test or a try)
    is saved whatever it measures."""
    misses = []
    for name, (low, high) in BANDS[world].items():
        got = models[name]["eval"]["accuracy_greedy"]
        if got < low:
            misses.append(f"{name} {got:.3f}, {low - got:.3f} below the band's {low:.2f}")
        elif got > high:
            misses.append(f"{name} {got:.3f}, {got - high:.3f} above the band's {high:.2f}")
    if misses:
        raise BandsMissed(
            f"the {world} world misses its bands (greedy accuracy on eval): "
            + "; ".join(misses)
            + "; not saved (change the recipe in omniopd/toy/recipe.py)"
        )


def ensure_toy_world(
    recipe: Recipe | None = None,
    *,
    home: Path | None = None,
    rebuild: bool = False,
    workers: int | None = None,
) -> ToyWorld:
    """The trained world for ``recipe`` (default :class:`Recipe`), built if not cached.

    Cached under ``$OMNIOPD_HOME/toy/<recipe hash>/``; ``rebuild`` builds it afresh.
    """
    recipe = recipe or Recipe()
    root = cache_dir(recipe, home)
    if is_complete(root) and not rebuild:
        return ToyWorld.at(root)
    with locked(root.with_name(f"{root.name}.lock")):
        if is_complete(root) and not rebuild:  # another process built it while we waited
            return ToyWorld.at(root)
        for stale in root.parent.glob(f".building-{root.name}-*"):
            shutil.rmtree(stale)  # left by a killed build; we hold the lock, so none is live
        temp = root.with_name(f".building-{root.name}-{os.getpid()}")
        temp.mkdir()
        log.info("building the toy world %s (recipe %s)", root, recipe.hash())
        try:
            manifest = build_world(recipe, temp, workers)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        if root.exists():
            old = root.with_name(f".old-{root.name}-{os.getpid()}")
            root.rename(old)
            shutil.rmtree(old)
        make_readable(temp)  # uid 1000 in the images reads it too (safetensors writes 0600)
        temp.rename(root)  # atomic on one filesystem: the world appears complete or not at all
        log.info("toy world built in %.0f s", manifest["build_seconds"])
    return ToyWorld.at(root)


def copy_world(world: ToyWorld, out: Path) -> ToyWorld:
    """A copy of ``world`` at ``out`` (a missing or empty folder, or a copy of the same recipe,
    which is left as it is)."""
    out = Path(out)
    if (
        is_complete(out)
        and ToyWorld.at(out).manifest["recipe_hash"] == world.manifest["recipe_hash"]
    ):
        return ToyWorld.at(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; give a new or empty folder")
    shutil.copytree(world.root, out, dirs_exist_ok=True)
    make_readable(out)  # a cache built before worlds were made readable is copied readable
    return ToyWorld.at(out)
