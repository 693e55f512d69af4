"""Backward passes and the optimiser step, shared by every method.

A step's loss is a sum of terms, each a token- or fork-mean over the *whole* step (all ranks).
Each term is computed in micro-batches whose losses are scaled by the step-wide count, so the
gradients add up to the full-batch gradient exactly whatever ``grad_accum_steps`` is; each
micro-batch is backpropagated at once, keeping one micro-batch of activations in memory.

With ``--fsdp`` every rank must run as many passes as the others (a sharded forward is
collective): a rank with fewer micro-batches (fewer scored forks, fewer SFT answers) catches
up with passes that add nothing to the loss (``fsdp.idle_pass``).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.losses import (
    Metrics,
    cross_entropy_loss,
    exact_kl,
    k3_kl,
    kl_loss,
    policy_gradient_loss,
)
from omniopd.trainer.models import Batch, continuation_logits, token_logprobs

if TYPE_CHECKING:
    from omniopd.trainer.context import Run


def micro_batches(n: int, parts: int) -> list[slice]:
    """``n`` rows in at most ``parts`` contiguous, non-empty, near-equal slices."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _add(total: Metrics, part: Metrics) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def kl_anchor_backward(
    model: torch.nn.Module,
    ref: torch.nn.Module,
    batch: Batch,
    *,
    beta: float,
    estimator: str,
    temperature: float,
    num_tokens: float,
    parts: int,
    target_is_ref: bool = True,
) -> Metrics:
    """β · mean_t KL(π_θ ‖ π_ref) over every continuation token of ``batch``, backpropagated.

    ``num_tokens``: the step's token count over all ranks. With ``target_is_ref=False`` the
    same term serves OPD, where ``ref`` is the white-box teacher (reported as ``opd_kl``).
    """
    total: Metrics = {}
    passes = micro_batches(len(batch), parts)
    catch_up = fsdp.passes_to_catch_up(model, len(passes))  # agreed before any pass
    for rows in passes:
        mb = batch.select(rows)
        logits = continuation_logits(model, mb, temperature)
        with torch.no_grad():
            ref_logits = continuation_logits(ref, mb, temperature)
        if estimator == "exact":
            kl_NT = exact_kl(logits, ref_logits, mb.mask_BT)
        else:
            kl_NT = k3_kl(
                token_logprobs(logits, mb.tokens_BT),
                token_logprobs(ref_logits, mb.tokens_BT),
                mb.mask_BT,
            )
        loss, metrics = kl_loss(kl_NT, beta=beta, num_tokens=num_tokens)
        if beta > 0:
            loss.backward()
        _add(total, metrics)
    for _ in range(catch_up):
        fsdp.idle_pass(model, (ref,), backward=beta > 0)
    if not target_is_ref:
        total = {"opd_kl": total.get("kl", 0.0), "opd_loss": total.get("kl_loss", 0.0)}
    return total


def policy_gradient_backward(
    model: torch.nn.Module,
    batch: Batch,
    advantages_N: torch.Tensor,
    *,
    normalizer: float,
    temperature: float,
    parts: int,
    old_logprobs: list[torch.Tensor] | None = None,
    clip: float = 0.2,
) -> tuple[Metrics, list[torch.Tensor]]:
    """The policy-gradient term over ``batch``'s sequences, backpropagated per micro-batch.

    Returns the metrics and each micro-batch's log-probs (detached), the ``old_logprobs`` of
    the next PPO epoch.
    """
    total: Metrics = {}
    saved = []
    passes = micro_batches(len(batch), parts)
    catch_up = fsdp.passes_to_catch_up(model, len(passes))  # agreed before any pass
    for i, rows in enumerate(passes):
        mb = batch.select(rows)
        logp_NT = token_logprobs(continuation_logits(model, mb, temperature), mb.tokens_BT)
        old = old_logprobs[i] if old_logprobs is not None else None
        loss, metrics = policy_gradient_loss(
            logp_NT,
            mb.mask_BT,
            advantages_N[rows].to(logp_NT.device),
            normalizer=normalizer,
            old_logprobs_NT=old,
            clip=clip,
        )
        loss.backward()
        saved.append(logp_NT.detach())
        if "clip_fraction" in metrics:  # means over micro-batches, weighted by their share
            share = (rows.stop - rows.start) / len(batch)
            metrics["clip_fraction"] *= share
            metrics["ratio_mean"] *= share
        _add(total, metrics)
    for _ in range(catch_up):
        fsdp.idle_pass(model)
    return total, saved


def cross_entropy_backward(
    model: torch.nn.Module, batch: Batch, *, temperature: float, num_tokens: float, parts: int
) -> Metrics:
    """SFT: token-mean negative log-likelihood of ``batch``'s continuations, backpropagated."""
    total: Metrics = {}
    passes = micro_batches(len(batch), parts)
    catch_up = fsdp.passes_to_catch_up(model, len(passes))  # agreed before any pass
    for rows in passes:
        mb = batch.select(rows)
        logp_NT = token_logprobs(continuation_logits(model, mb, temperature), mb.tokens_BT)
        loss, metrics = cross_entropy_loss(logp_NT, mb.mask_BT, num_tokens=num_tokens)
        loss.backward()
        _add(total, metrics)
    for _ in range(catch_up):
        fsdp.idle_pass(model)
    return total


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float
) -> float:
    """Sum gradients over ranks, clip, step, and return the gradient norm before clipping.

    Under FSDP the backward passes already summed them (reduce-scatter), shard by shard."""
    params = [p for p in model.parameters() if p.requires_grad]
    if fsdp.is_sharded(model):
        norm = fsdp.gradient_norm(params, max_grad_norm)
    else:
        dist_utils.sum_gradients(params)
        grads = [p.grad for p in params if p.grad is not None]
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        elif grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
        else:
            norm = torch.tensor(0.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> LambdaLR:
    """Linear warm-up, then constant, linear or cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


# -- what the methods share, on a run's settings ----------------------------------------------


def kl_anchor(run: Run, batch: Batch, num_tokens: float) -> Metrics:
    """β·KL(π_θ ‖ π_ref) on every token of ``batch`` (forward and backward), the anchor every
    method carries; nothing when there is no reference or β = 0."""
    cfg = run.config
    if run.ref is None or cfg.beta <= 0:
        return {}
    return kl_anchor_backward(
        run.model,
        run.ref,
        batch,
        beta=cfg.beta,
        estimator=cfg.kl_estimator,
        temperature=cfg.temperature,
        num_tokens=max(num_tokens, 1.0),
        parts=cfg.grad_accum_steps,
    )


def later_epochs(
    run: Run,
    anchored: Batch,
    batch: Batch,
    advantages_N: torch.Tensor,
    *,
    normalizer: float,
    old_logprobs: list[torch.Tensor] | None,
    num_tokens: float,
) -> float | None:
    """Epochs 2 to ``ppo_epochs`` on the same samples: the KL anchor on ``anchored`` and PPO's
    clipped ratio on ``batch`` against the first epoch's log-probs (none: the anchor alone),
    one optimiser step each. Returns the last epoch's clip fraction, if any epoch clipped."""
    cfg = run.config
    clip_fraction = None
    for _ in range(1, cfg.ppo_epochs):
        kl_anchor(run, anchored, num_tokens)
        if old_logprobs is not None:
            later, _ = policy_gradient_backward(
                run.model,
                batch,
                advantages_N,
                normalizer=normalizer,
                temperature=cfg.temperature,
                parts=cfg.grad_accum_steps,
                old_logprobs=old_logprobs,
                clip=cfg.clip,
            )
            clip_fraction = later.get("clip_fraction", 0.0)
        optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)
    return clip_fraction
