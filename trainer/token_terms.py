"""Step 6's forward pass for the published objective: log π_θ and KL(π_ref ‖ π_θ) per token.

The student's log-probabilities and the exact KL are computed from the last hidden states,
through the LM head a slice of positions at a time under activation checkpointing, so no
batch × length × vocabulary tensor is held (a real vocabulary has 49k-150k entries). A sharded
model (``--fsdp``) runs its head only inside its own forward: there the logits of a micro-batch
are formed whole and sliced afterwards (``grad_accum_steps`` bounds them).
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch.utils.checkpoint import checkpoint

from omniopd.trainer import fsdp
from omniopd.trainer.losses import forward_kl
from omniopd.trainer.models import Batch, continuation_logits, positions_from_mask

log = logging.getLogger("omniopd.trainer")

# Positions per slice through the LM head: sets the peak memory of the update, not its result.
SLICE_TOKENS = 1024

_HEAD_IS_LOGITS: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def head_gives_logits(model: torch.nn.Module) -> bool:
    """Whether the LM head applied to the decoder's last hidden states gives the model's logits.

    Checked once per model on a few tokens: some architectures change the logits after the
    head (Gemma's soft-capping, Granite's and Cohere's scaling), and for those the sliced path
    would score another distribution than the rollout sampled from.
    """
    if model not in _HEAD_IS_LOGITS:
        device = next(model.parameters()).device
        ids = torch.arange(1, 5, device=device)[None]
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float()
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            via_head = model.get_output_embeddings()(hidden).float()
        _HEAD_IS_LOGITS[model] = torch.allclose(logits, via_head, rtol=1e-3, atol=1e-3)
        if not _HEAD_IS_LOGITS[model]:
            log.warning(
                "%s: the LM head on the last hidden states does not give the model's logits;"
                " the update forms whole logits instead of slicing through the head",
                type(model).__name__,
            )
    return _HEAD_IS_LOGITS[model]


def continuation_hidden(
    model: torch.nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.nn.Module | None]:
    """(states (B, T, ·) predicting each continuation token, the head that maps them to logits).

    The states are the decoder's last hidden states and the head the LM head. For a sharded
    model, whose head only runs inside its own forward, and for one whose logits are not the
    head's output (:func:`head_gives_logits`), they are the untempered logits and the head None.
    """
    if fsdp.is_sharded(model) or not head_gives_logits(model):
        return continuation_logits(model, batch, 1.0), None
    ids_BS = torch.cat([batch.prefix_ids_BP, batch.tokens_BT], dim=1)
    mask_BS = torch.cat([batch.prefix_mask_BP, batch.mask_BT], dim=1).long()
    P, T = batch.prefix_ids_BP.shape[1], batch.tokens_BT.shape[1]
    out = model.get_decoder()(
        input_ids=ids_BS,
        attention_mask=mask_BS,
        position_ids=positions_from_mask(mask_BS),
        use_cache=False,
    )
    return out.last_hidden_state[:, P - 1 : P + T - 1], model.get_output_embeddings()


def _slice_terms(
    states_NH: torch.Tensor,
    ref_states_NH: torch.Tensor | None,
    tokens_N: torch.Tensor,
    head: torch.nn.Module | None,
    ref_head: torch.nn.Module | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_θ(y) (N,) and KL(π_ref ‖ π_θ) (N,) for one slice of positions (KL 0 without ref)."""
    logits_NV = (head(states_NH) if head is not None else states_NH).float() / temperature
    logp_NV = torch.log_softmax(logits_NV, dim=-1)
    logp_N = logp_NV.gather(-1, tokens_N[:, None]).squeeze(-1)
    if ref_states_NH is None:
        return logp_N, torch.zeros_like(logp_N)
    with torch.no_grad():
        ref_NV = (ref_head(ref_states_NH) if ref_head is not None else ref_states_NH).float()
    return logp_N, forward_kl(logits_NV, ref_NV / temperature)


def token_terms(
    model: torch.nn.Module,
    ref: torch.nn.Module | None,
    batch: Batch,
    *,
    temperature: float,
    slice_tokens: int = SLICE_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_θ(y_t) (B, T) and KL(π_ref ‖ π_θ)(t) (B, T) at every continuation token, 0 on padding.

    Both carry gradients. Each slice of ``slice_tokens`` positions is checkpointed: its
    (slice, V) logits are recomputed in the backward pass instead of being kept.
    """
    states, head = continuation_hidden(model, batch)
    ref_states, ref_head = None, None
    if ref is not None:
        with torch.no_grad():
            ref_states, ref_head = continuation_hidden(ref, batch)
    rows, cols = batch.mask_BT.nonzero(as_tuple=True)
    tokens_N = batch.tokens_BT[rows, cols]
    logps, kls = [], []
    for start in range(0, rows.numel(), slice_tokens):
        r, c = rows[start : start + slice_tokens], cols[start : start + slice_tokens]
        args = (
            states[r, c],
            ref_states[r, c] if ref_states is not None else None,
            tokens_N[start : start + slice_tokens],
            head,
            ref_head,
            temperature,
        )
        if torch.is_grad_enabled() and states.requires_grad:
            logp_N, kl_N = checkpoint(_slice_terms, *args, use_reentrant=False)
        else:
            logp_N, kl_N = _slice_terms(*args)
        logps.append(logp_N)
        kls.append(kl_N)
    shape = tuple(batch.tokens_BT.shape)
    zeros = torch.zeros(shape, device=states.device, dtype=torch.float32)
    if not logps:
        return zeros, zeros.clone()
    index = (rows, cols)
    return zeros.index_put(index, torch.cat(logps)), zeros.index_put(index, torch.cat(kls))
