"""Per-step metrics: ``metrics.jsonl`` (one object per step), TensorBoard when installed.

Every method writes every key of :data:`STEP_KEYS`; a key that does not apply to a method (no
forks in ``opd``, no reward in ``sft``) is ``null``, so files from different methods line up.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("omniopd.trainer")

STEP_KEYS = (
    "step",
    "loss",
    "pg_loss",
    "kl",
    "reward_mean",
    "advantage_std",
    "forks",
    "forks_failed",
    "forks_unanimous",
    "entropy_at_forks",
    "entropy_mean",
    "repetition_rate",
    "truncated_rate",
    "response_tokens_mean",
    "teacher_tokens",
    "teacher_retries",
    "verifier_retries",
    "time_rollout_s",
    "time_teacher_s",
    "time_verifier_s",
    "time_wait_s",
    "time_update_s",
    "time_step_s",
    "lr",
    "grad_norm",
)


def has_repetition_loop(
    tokens: list[int], *, max_period: int = 16, min_repeats: int = 3, min_span: int = 12
) -> bool:
    """True when some block of at most ``max_period`` tokens repeats back to back at least
    ``min_repeats`` times over at least ``min_span`` tokens (the degenerate loops a student can
    fall into, e.g. ``= 12 = 12 = 12 …``)."""
    n = len(tokens)
    for p in range(1, min(max_period, n // min_repeats) + 1):
        run = 0
        for i in range(p, n):
            run = run + 1 if tokens[i] == tokens[i - p] else 0
            if run + p >= max(min_repeats * p, min_span):
                return True
    return False


def response_metrics(
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    entropy_BT: torch.Tensor,
    truncated_B: torch.Tensor,
) -> dict[str, float]:
    """entropy_mean (per token), repetition_rate and truncated_rate (per response), length."""
    mask = mask_BT.bool()
    rows = [t[m].tolist() for t, m in zip(tokens_BT.cpu(), mask.cpu(), strict=True)]
    B = max(1, len(rows))
    return {
        "entropy_mean": float(entropy_BT[mask].mean()) if mask.any() else 0.0,
        "repetition_rate": sum(has_repetition_loop(r) for r in rows) / B,
        "truncated_rate": float(truncated_B.float().mean()) if len(rows) else 0.0,
        "response_tokens_mean": float(mask.sum()) / B,
    }


def complete(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every :data:`STEP_KEYS` key (None where absent) first, then any extra keys; NaN → None."""
    out = {k: metrics.get(k) for k in STEP_KEYS}
    out |= {k: v for k, v in metrics.items() if k not in out}
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()
    }


class MetricsWriter:
    """Writes ``metrics.jsonl`` (flushed each step, so a killed run keeps what it logged).

    A run from step 0 starts the file afresh (a ``--resume`` that found no checkpoint too); a
    run resumed from step N keeps the lines up to N and appends after them.
    """

    def __init__(self, output_dir: Path, *, resume_step: int = 0) -> None:
        self.path = output_dir / "metrics.jsonl"
        if resume_step and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a" if resume_step else "w")
        self._tb = self._tensorboard(output_dir)

    def _truncate_after(self, step: int) -> None:
        """Drop lines of steps after the checkpoint: they are redone by the resumed run."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
        self.path.write_text("".join(f"{line}\n" for line in kept))

    @staticmethod
    def _tensorboard(output_dir: Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed: metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def write(self, metrics: dict[str, Any]) -> dict[str, Any]:
        row = complete(metrics)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(key, value, row["step"])
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
