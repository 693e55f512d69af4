"""Supervised training of one toy model on ``{"prompt", "answer"}`` rows, on the CPU.

Plain next-token cross-entropy on the answer tokens only (the chat-template prefix is context,
not target), right-padded batches (optionally run as length-sorted micro-batches), AdamW with
linear warmup then cosine decay to 10% of the peak learning rate, as in nanoGPT. Deterministic
in ``spec.seed``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from omniopd.toy.recipe import ModelSpec
from omniopd.toy.text import render_prefix

log = logging.getLogger("omniopd.toy.train")

IGNORE = -100
MIN_LR_FRACTION = 0.1


@dataclass(frozen=True)
class Encoded:
    """Token ids of every row: ``ids[i]`` is prefix + answer + eos, ``n_prefix[i]`` its prefix."""

    ids: list[list[int]]
    n_prefix: list[int]


def encode_rows(tokenizer: PreTrainedTokenizerFast, rows: Sequence[Mapping[str, str]]) -> Encoded:
    """Tokenise each row as the chat template renders it: prefix, answer, eos."""
    prefixes = [render_prefix(tokenizer, r["prompt"]) for r in rows]
    pre = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    ans = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return Encoded(
        ids=[p + a + [eos] for p, a in zip(pre, ans, strict=True)], n_prefix=[len(p) for p in pre]
    )


def make_batch(
    data: Encoded, index: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids_BT, attention_mask_BT, labels_BT)``; labels are the input ids on
    answer tokens and ``IGNORE`` on the prefix and padding (not yet shifted)."""
    width = max(len(data.ids[i]) for i in index)
    ids_BT = torch.full((len(index), width), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(index), width), dtype=torch.long)
    labels_BT = torch.full((len(index), width), IGNORE, dtype=torch.long)
    for b, i in enumerate(index):
        row = torch.tensor(data.ids[i])
        ids_BT[b, : len(row)] = row
        mask_BT[b, : len(row)] = 1
        labels_BT[b, data.n_prefix[i] : len(row)] = row[data.n_prefix[i] :]
    return ids_BT, mask_BT, labels_BT


def answer_loss(
    logits_BTV: torch.Tensor, labels_BT: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of predicting each labelled token from the position before it, its mean
    (or ``reduction="sum"``) over the labelled tokens."""
    return F.cross_entropy(
        logits_BTV[:, :-1].flatten(0, 1).float(),
        labels_BT[:, 1:].flatten(),
        ignore_index=IGNORE,
        reduction=reduction,
    )


def backward_batch(
    model: torch.nn.Module, data: Encoded, index: Sequence[int], pad_id: int, micro_batches: int
) -> tuple[float, int]:
    """Forward and backward of one batch (gradients accumulate in ``model``); returns the loss,
    the mean cross-entropy over the batch's answer tokens, and the batch's real tokens.

    With ``micro_batches > 1`` the rows are sorted by length and split into that many
    micro-batches, each padded only to its own longest row; each adds its summed loss divided by
    the whole batch's answer tokens, so the gradient is the one-batch gradient up to
    floating-point order (checked in tests/toy/test_train.py), for less padding.
    """
    if micro_batches == 1:  # in the batch's own row order: the shipped worlds' exact numbers
        ids_BT, mask_BT, labels_BT = make_batch(data, index, pad_id)
        loss = answer_loss(model(input_ids=ids_BT, attention_mask=mask_BT).logits, labels_BT)
        loss.backward()
        return loss.item(), int(mask_BT.sum())
    rows = sorted(index, key=lambda i: len(data.ids[i]))
    n_answer = sum(len(data.ids[i]) - data.n_prefix[i] for i in rows)
    total, tokens = 0.0, 0
    for part in torch.tensor_split(torch.tensor(rows), micro_batches):
        ids_BT, mask_BT, labels_BT = make_batch(data, part.tolist(), pad_id)
        logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits
        loss = answer_loss(logits_BTV, labels_BT, reduction="sum") / n_answer
        loss.backward()
        total += loss.item()
        tokens += int(mask_BT.sum())
    return total, tokens


def lr_at(step: int, spec: ModelSpec) -> float:
    """Linear warmup over ``spec.warmup`` steps, then cosine from ``spec.lr`` to 10% of it."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return spec.lr * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cosine)


def make_optimizer(model: torch.nn.Module, spec: ModelSpec) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.98), eps=1e-8)


@dataclass(frozen=True)
class TrainReport:
    steps: int  # steps run (fewer than planned when a check stopped training)
    planned_steps: int
    seconds: float
    final_loss: float  # mean over the last 20 steps
    tokens_per_second: float


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[Mapping[str, str]],
    spec: ModelSpec,
    name: str = "model",
    should_stop: Callable[[int], bool] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> TrainReport:
    """Train ``model`` in place for up to ``spec.steps`` batches of ``spec.batch_size`` rows,
    drawn without replacement from a seeded shuffle (reshuffled each epoch).

    ``should_stop(steps_done)`` is asked every ``spec.check_every`` steps from
    ``spec.check_from`` on (and may evaluate the model); True ends training there.
    ``after_step(steps_done)`` is called after every step.
    """
    data = encode_rows(tokenizer, rows)
    pad_id = tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(spec.seed)
    optimizer = make_optimizer(model, spec)
    model.train()
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    done = 0
    for step in range(spec.steps):
        if len(order) < spec.batch_size:
            order = torch.randperm(len(data.ids), generator=gen).tolist()
        index, order = order[: spec.batch_size], order[spec.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, spec)
        optimizer.zero_grad(set_to_none=True)
        loss, batch_tokens = backward_batch(model, data, index, pad_id, spec.micro_batches)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss)
        tokens += batch_tokens
        done = step + 1
        if after_step is not None:
            after_step(done)
        if step % 100 == 0 or done == spec.steps:
            log.info("%s: step %d/%d loss %.4f", name, done, spec.steps, losses[-1])
        checking = done >= spec.check_from and done % spec.check_every == 0
        if should_stop is not None and checking and should_stop(done):
            log.info("%s: stopping at step %d", name, done)
            break
    seconds = time.perf_counter() - start
    tail = losses[-20:] or [float("nan")]
    model.eval()
    return TrainReport(
        steps=done,
        planned_steps=spec.steps,
        seconds=seconds,
        final_loss=sum(tail) / len(tail),
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
    )
