"""Held-out evaluation during training, with ``omniopd-eval``'s code (``omniopd.evaluation``)."""

from __future__ import annotations

from typing import Any

from omniopd.evaluation import evaluate as evaluate_model
from omniopd.trainer.context import Run
from omniopd.trainer.data import Example


def evaluate(run: Run, examples: list[Example]) -> dict[str, Any]:
    """Greedy accuracy and sampled pass@1 (at the training temperature) on ``examples``.

    The evaluation draws from its own seeded RNG, so it does not change the training run's
    random stream: a run evaluated every step samples what an unevaluated one would.
    """
    cfg = run.config
    result = evaluate_model(
        run.model,
        run.tokenizer,
        [{"prompt": e.prompt, "answer": e.answer or ""} for e in examples],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.eval_batch_size,
        temperature=cfg.temperature,
        seed=cfg.seed,
        sampled=True,
    )
    return result.summary()
