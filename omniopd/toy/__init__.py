"""The toy world: a synthetic arithmetic task and real Hugging Face models built on the CPU.

``build_tiny(out_dir)`` makes randomly initialised models in seconds (plumbing tests);
``ensure_toy_world()`` returns the trained world, built once and cached by recipe hash. The task
itself (problems, splits, answer checker) is :mod:`omniopd.toy.task` and needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omniopd.toy.build import ensure_toy_world
    from omniopd.toy.world import ToyWorld, build_tiny

__all__ = ["ToyWorld", "build_tiny", "ensure_toy_world"]

_LAZY = {
    "ToyWorld": "omniopd.toy.world",
    "build_tiny": "omniopd.toy.world",
    "ensure_toy_world": "omniopd.toy.build",
}


def __getattr__(name: str) -> Any:
    # torch and transformers load only when a model-building name is used.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omniopd.toy' has no attribute {name!r}")
