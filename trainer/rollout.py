"""Step 1 of docs/method.md: the student samples a response per prompt, keeping H_t and log π.

One batched sampler serves the rollout (prefill the prompts, then decode) and the drafts
(prefill the fork contexts once, copy that KV cache K-1 times, then decode). Rows are
left-padded so every row's next token sits in the last column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omniopd.trainer import fsdp
from omniopd.trainer.models import Batch, cache_kwarg, left_pad, positions_from_mask


@dataclass
class Samples:
    """What a decode produced, right-padded after each row's end.

    tokens_BT: sampled ids (pad after the end); mask_BT: True on real tokens, EOS included;
    logprobs_BT: log π_τ of each sampled token; entropy_BT: H_t of the distribution it was
    drawn from (nats); finished_B: the row ended with EOS (False: it hit the length limit).
    """

    tokens_BT: torch.Tensor
    mask_BT: torch.Tensor
    logprobs_BT: torch.Tensor
    entropy_BT: torch.Tensor
    finished_B: torch.Tensor


@dataclass
class Rollout:
    """Step 1's output: prompts (left-padded) and the sampled responses with H_t and log π."""

    prompt_ids_BP: torch.Tensor
    prompt_mask_BP: torch.Tensor
    samples: Samples

    @property
    def response_ids_BT(self) -> torch.Tensor:
        return self.samples.tokens_BT

    @property
    def response_mask_BT(self) -> torch.Tensor:
        return self.samples.mask_BT

    @property
    def entropy_BT(self) -> torch.Tensor:
        return self.samples.entropy_BT

    @property
    def truncated_B(self) -> torch.Tensor:
        return ~self.samples.finished_B

    def as_batch(self) -> Batch:
        return Batch(
            self.prompt_ids_BP, self.prompt_mask_BP, self.response_ids_BT, self.response_mask_BT
        )

    def response_lengths(self) -> list[int]:
        return self.samples.mask_BT.sum(-1).tolist()


@torch.no_grad()
def prefill(
    model: torch.nn.Module, ids_BS: torch.Tensor, mask_BS: torch.Tensor
) -> tuple[torch.Tensor, object]:
    """Run the prefix once: (last-position logits (B, V), KV cache)."""
    out = model(
        input_ids=ids_BS,
        attention_mask=mask_BS.long(),
        position_ids=positions_from_mask(mask_BS),
        use_cache=True,
    )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return out.logits[:, -1].float(), cache


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    logits_BV: torch.Tensor,
    cache: object,
    mask_BS: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
    min_new_tokens: int = 0,
) -> Samples:
    """Sample up to ``max_new_tokens`` per row from ``softmax(logits / τ)``, with the KV cache.

    ``logits_BV`` are the logits after the prefix whose cache is ``cache`` and whose mask is
    ``mask_BS``. A row stops at its first EOS (kept, masked in); EOS cannot be drawn before
    ``min_new_tokens`` tokens (as in ``transformers``' ``min_new_tokens``). Uses torch's
    global RNG. A sharded model (``--fsdp``) decodes until every rank is done: a rank that is
    done early only forwards placeholders, so it samples exactly what it would alone.
    """
    B, device = logits_BV.shape[0], logits_BV.device
    eos_B1 = torch.tensor(eos_ids, device=device)
    mask_BS = mask_BS.to(device).long()
    next_pos_B = mask_BS.sum(-1)
    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, alive, logprobs, entropies = [], [], [], []
    key = cache_kwarg(model)
    lockstep = fsdp.is_sharded(model)
    for t in range(max_new_tokens):
        scaled_BV = logits_BV / temperature
        if t < min_new_tokens:
            scaled_BV[:, eos_ids] = float("-inf")
        logp_BV = F.log_softmax(scaled_BV, dim=-1)
        p_BV = logp_BV.exp()
        entropy_B = -(p_BV * logp_BV.clamp(min=torch.finfo(logp_BV.dtype).min)).sum(-1)
        tok_B = torch.multinomial(p_BV, 1).squeeze(-1)
        live_B = ~finished_B
        tok_B = torch.where(live_B, tok_B, torch.full_like(tok_B, pad_id))
        tokens.append(tok_B)
        alive.append(live_B)
        logprobs.append(logp_BV.gather(-1, tok_B[:, None]).squeeze(-1) * live_B)
        entropies.append(entropy_B * live_B)
        finished_B = finished_B | (live_B & torch.isin(tok_B, eos_B1))
        if bool(finished_B.all()) or len(tokens) == max_new_tokens:
            break
        if lockstep:
            fsdp.still_decoding(model, True)
        mask_BS = torch.cat([mask_BS, torch.ones_like(mask_BS[:, :1])], dim=1)
        out = model(
            input_ids=tok_B[:, None],
            attention_mask=mask_BS,
            position_ids=next_pos_B[:, None],
            use_cache=True,
            **{key: cache},
        )
        next_pos_B = next_pos_B + 1
        logits_BV = out.logits[:, -1].float()
    fsdp.idle_until_all_done(model)
    if not tokens:
        empty = torch.zeros((B, 0), device=device)
        return Samples(empty.long(), empty.bool(), empty, empty, finished_B)
    return Samples(
        tokens_BT=torch.stack(tokens, 1),
        mask_BT=torch.stack(alive, 1),
        logprobs_BT=torch.stack(logprobs, 1),
        entropy_BT=torch.stack(entropies, 1),
        finished_B=finished_B,
    )


def rollout(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
    min_new_tokens: int = 0,
) -> Rollout:
    """Step 1: one response per prompt (token lists), batched, left-padded, with a KV cache."""
    device = next(model.parameters()).device
    ids_BP, mask_BP = left_pad(prompts, pad_id)
    ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
    logits_BV, cache = prefill(model, ids_BP, mask_BP)
    samples = decode(
        model,
        logits_BV,
        cache,
        mask_BP,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_ids=eos_ids,
        pad_id=pad_id,
        min_new_tokens=min_new_tokens,
    )
    return Rollout(ids_BP, mask_BP, samples)
