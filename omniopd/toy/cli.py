"""``omniopd-toy``: build the toy world (``build``) or a random one for plumbing tests (``tiny``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from omniopd.log import add_logging_args, configure_from_args
from omniopd.toy.recipe import WORLDS

log = logging.getLogger("omniopd.toy")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniopd-toy", description=__doc__)
    add_logging_args(p)
    sub = p.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="the trained world, cached by recipe hash (minutes)")
    build.add_argument(
        "--out", type=Path, default=None, help="also copy the world to this (new or empty) folder"
    )
    build.add_argument("--rebuild", action="store_true", help="build again even if cached")
    build.add_argument(
        "--world", choices=WORLDS, default="arith", help="the task (docs/toy.md); default arith"
    )
    build.add_argument(
        "--workers", type=int, default=None, help="training processes (default: min(3, CPUs))"
    )
    tiny = sub.add_parser("tiny", help="randomly initialised models and small splits, in seconds")
    tiny.add_argument("--out", type=Path, required=True, help="folder to write the world to")
    tiny.add_argument("--world", choices=WORLDS, default="arith", help="the task; default arith")
    return p


def format_summary(manifest: dict) -> str:
    """The world's models as a table: parameters, greedy and sampled accuracy on eval."""
    lines = [
        f"toy world {manifest['recipe'].get('world', 'arith')} {manifest['recipe_hash']}, built in {manifest['build_seconds']:.0f} s",
        f"{'model':<14}{'params':>10}{'greedy':>9}{'sampled':>9}{'train s':>9}",
    ]
    for name, m in manifest["models"].items():
        ev = m["eval"]
        lines.append(
            f"{name:<14}{m['params']:>10,}{ev['accuracy_greedy']:>9.3f}"
            f"{ev['accuracy_sampled']:>9.3f}{m['train']['seconds']:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_from_args(args)
    if args.command == "build" and args.workers is not None and args.workers < 1:
        parser().error(f"--workers must be >= 1, got {args.workers}")
    if args.command == "build":
        from omniopd.toy.build import BandsMissed, copy_world, ensure_toy_world
        from omniopd.toy.recipe import RECIPES

        # SIGTERM (a scheduler, or `make test` stopping the build it started) ends a build as
        # Ctrl-C does: the workers are killed and the unfinished folder removed, not orphaned.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        try:
            world = ensure_toy_world(
                RECIPES[args.world], rebuild=args.rebuild, workers=args.workers
            )
        except BandsMissed as err:
            print(f"omniopd-toy: {err}", file=sys.stderr)
            return 1
        print(format_summary(world.manifest))
        if args.out is not None:
            try:
                world = copy_world(world, args.out)
            except FileExistsError as err:
                print(f"omniopd-toy: {err}", file=sys.stderr)
                return 2
            log.info("copied the world to %s", world.root)
        print(world.root)
    elif args.command == "tiny":
        from transformers.utils import logging as hf_logging

        from omniopd.toy.recipe import TINY_RECIPES
        from omniopd.toy.world import build_tiny

        hf_logging.disable_progress_bar()
        world = build_tiny(args.out, TINY_RECIPES[args.world])
        log.info("tiny world built in %.1f s", world.manifest["build_seconds"])
        print(world.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
