"""Per-step metrics: what each method's step reports, and ``metrics.jsonl`` (one object per
step; TensorBoard too when installed).

Each method's step returns its own dataclass (:class:`DraftsMetrics`, :class:`LikelihoodMetrics`,
:class:`OPDMetrics`, :class:`SFTMetrics`, :class:`GRPOMetrics`), whose fields say how the ranks'
values combine (:func:`merge_ranks`). Every method writes every key of :data:`STEP_KEYS`; a key
that does not apply to a method (no forks in ``opd``, no reward in ``sft``) is ``null``, so files
from different methods line up.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
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


# How ranks combine a field's values: counts and loss shares (already divided by the step's total
# over every rank) add up, times take the slowest rank's, the rest is averaged.
_MERGE: dict[str, Callable[[list[Any]], Any]] = {
    "sum": sum,
    "max": max,
    "min": min,
    "mean": lambda values: sum(values) / len(values),
}


def _merged(how: str = "mean", default: Any = None) -> Any:
    """A metric field and its rule across ranks (a key of ``_MERGE``)."""
    return field(default=default, metadata={"merge": how})


@dataclass(kw_only=True)
class StepMetrics:
    """What every method's step reports (``None``: does not apply to this step)."""

    loss: float = _merged("sum", 0.0)
    kl: float | None = _merged("sum")  # KL(π_θ ‖ π_ref), the anchor's, per token
    # the rollout's responses (response_metrics); none for sft, which samples nothing
    entropy_mean: float | None = _merged()
    repetition_rate: float | None = _merged()
    truncated_rate: float | None = _merged()
    response_tokens_mean: float | None = _merged()
    grad_norm: float | None = _merged()
    # what every metrics file has, so that runs of different methods line up and add up: 0
    # where the method has none (white-box OPD and GRPO ask the services nothing)
    time_rollout_s: float = _merged("max", 0.0)
    time_teacher_s: float = _merged("max", 0.0)
    time_verifier_s: float = _merged("max", 0.0)
    time_update_s: float = _merged("max", 0.0)
    forks: int = _merged("sum", 0)
    forks_failed: int = _merged("sum", 0)
    teacher_tokens: int = _merged("sum", 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class OPDMetrics(StepMetrics):
    opd_kl: float = _merged("sum", 0.0)  # reverse KL to the white-box teacher, per token


@dataclass(kw_only=True)
class SFTMetrics(StepMetrics):
    sft_loss: float | None = _merged("sum")
    answers_failed: int = _merged("sum", 0)
    answers_cached: int = _merged("sum", 0)
    teacher_retries: int = _merged("sum", 0)


@dataclass(kw_only=True)
class GRPOMetrics(StepMetrics):
    pg_loss: float = _merged("sum", 0.0)
    clip_fraction: float | None = _merged()
    reward_mean: float | None = _merged()
    advantage_std: float | None = _merged()


@dataclass(kw_only=True)
class AuditMetrics(StepMetrics):
    """Both OmniOPD objectives: the audited chunks (forks) and the services that scored them."""

    forks_audited: int = _merged("sum", 0)
    forks_scored: int = _merged("sum", 0)
    entropy_at_forks: float | None = _merged()
    reward_mean: float | None = _merged()
    # steps 4 and 5 (scores.service_metrics, with teacher_tokens)
    teacher_cached: int = _merged("sum", 0)
    teacher_retries: int = _merged("sum", 0)
    verifier_retries: int = _merged("sum", 0)
    verifier_calls: int = _merged("sum", 0)
    time_drafts_s: float = _merged("max", 0.0)
    time_wait_s: float = _merged("max", 0.0)


@dataclass(kw_only=True)
class DraftsMetrics(AuditMetrics):
    pg_loss: float = _merged("sum", 0.0)
    clip_fraction: float | None = _merged()
    advantage_std: float | None = _merged()
    forks_unanimous: int = _merged("sum", 0)


@dataclass(kw_only=True)
class LikelihoodMetrics(AuditMetrics):
    chunk_loss: float = _merged("sum", 0.0)
    kl_loss: float | None = _merged("sum")
    chunks_per_response: float = _merged("mean", 0.0)
    audited_fraction: float = _merged("mean", 0.0)
    k_mean: float | None = _merged()  # Σ_n φ per scored chunk
    prior_mean: float | None = _merged()  # the student's π̄
    target_mean: float | None = _merged()  # π̂
    target_min: float | None = _merged("min")
    target_max: float | None = _merged("max")
    mixed_loss: float | None = _merged("sum")
    mixed_tokens: float | None = _merged("sum")
    mixed_prob: float | None = _merged()


def merge_ranks(per_rank: Sequence[StepMetrics]) -> dict[str, Any]:
    """The step's metrics from every rank's (all of one class), field by field by its rule;
    ``None`` where no rank has a value."""
    out: dict[str, Any] = {}
    for f in fields(per_rank[0]):
        values = [v for m in per_rank if (v := getattr(m, f.name)) is not None]
        out[f.name] = _MERGE[f.metadata["merge"]](values) if values else None
    return out


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
