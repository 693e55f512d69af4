"""Step 3 of the drafts objective (docs/method.md): K drafts per fork, the speculation the teacher will verify.

Draft 0 is the rollout's own chunk ``y[f:f+L]``; drafts 1..K-1 are fresh samples from
``π_θ(·|x ⊕ y[:f])``. All fork contexts of a step are prefilled together once; that KV cache
is copied K-1 times and decoded in one batch. A chunk ends early at EOS (kept in the chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from omniopd.trainer import fsdp
from omniopd.trainer.models import Batch, left_pad
from omniopd.trainer.rollout import Rollout, decode, prefill


@dataclass
class Drafts:
    """F forks × K drafts of up to L tokens.

    row_F / position_F: the response and position each fork audits; context_ids_FC /
    context_mask_FC: ``x ⊕ y[:f]``, left-padded; tokens_FKL / mask_FKL: the drafts,
    right-padded (draft 0 is the rollout's own chunk); logprobs_FKL: log π_τ when sampled.
    """

    row_F: list[int]
    position_F: list[int]
    context_ids_FC: torch.Tensor
    context_mask_FC: torch.Tensor
    tokens_FKL: torch.Tensor
    mask_FKL: torch.Tensor
    logprobs_FKL: torch.Tensor

    @property
    def num_forks(self) -> int:
        return len(self.row_F)

    @property
    def num_drafts(self) -> int:
        return self.tokens_FKL.shape[1]

    def as_batch(self, forks: list[int] | None = None) -> Batch:
        """The drafts of ``forks`` (default all) as F'·K sequences, fork-major (f0k0, f0k1, …)."""
        idx = torch.arange(self.num_forks) if forks is None else torch.tensor(forks).long()
        K = self.num_drafts
        return Batch(
            self.context_ids_FC[idx].repeat_interleave(K, dim=0),
            self.context_mask_FC[idx].repeat_interleave(K, dim=0),
            self.tokens_FKL[idx].flatten(0, 1),
            self.mask_FKL[idx].flatten(0, 1),
        )


def fork_contexts(rollout: Rollout, forks: list[list[int]]) -> list[tuple[int, int, list[int]]]:
    """(row, position, context tokens ``x ⊕ y[:f]``) for every fork, row-major."""
    prompts = [
        ids[mask].tolist()
        for ids, mask in zip(rollout.prompt_ids_BP.cpu(), rollout.prompt_mask_BP.cpu(), strict=True)
    ]
    responses = rollout.response_ids_BT.cpu().tolist()
    return [(b, f, prompts[b] + responses[b][:f]) for b, row in enumerate(forks) for f in row]


def make_drafts(
    model: torch.nn.Module,
    rollout: Rollout,
    forks: list[list[int]],
    *,
    num_drafts: int,
    chunk_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
) -> Drafts:
    """Step 3: the rollout's own chunk plus ``num_drafts - 1`` fresh ones, from one prefill."""
    device = rollout.prompt_ids_BP.device
    where = fork_contexts(rollout, forks)
    F_, K, L = len(where), num_drafts, chunk_tokens
    ctx_ids, ctx_mask = left_pad([c for _, _, c in where], pad_id)
    ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
    tokens = torch.full((F_, K, L), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((F_, K, L), dtype=torch.bool, device=device)
    logprobs = torch.zeros((F_, K, L), device=device)
    s = rollout.samples
    for i, (b, f, _) in enumerate(where):
        n = min(L, s.tokens_BT.shape[1] - f)
        tokens[i, 0, :n] = s.tokens_BT[b, f : f + n]
        mask[i, 0, :n] = s.mask_BT[b, f : f + n]
        logprobs[i, 0, :n] = s.logprobs_BT[b, f : f + n]
    if F_ and K > 1:
        logits_FV, cache = prefill(model, ctx_ids, ctx_mask)
        cache.batch_repeat_interleave(K - 1)
        fresh = decode(
            model,
            logits_FV.repeat_interleave(K - 1, dim=0),
            cache,
            ctx_mask.repeat_interleave(K - 1, dim=0),
            max_new_tokens=L,
            temperature=temperature,
            eos_ids=eos_ids,
            pad_id=pad_id,
        )
        n = fresh.tokens_BT.shape[1]
        tokens[:, 1:, :n] = fresh.tokens_BT.view(F_, K - 1, n)
        mask[:, 1:, :n] = fresh.mask_BT.view(F_, K - 1, n)
        logprobs[:, 1:, :n] = fresh.logprobs_BT.view(F_, K - 1, n)
    elif fsdp.is_sharded(model):  # no fork on this rank: keep pace with the ranks decoding some
        fsdp.idle_forward(model)
        fsdp.idle_until_all_done(model)
    return Drafts(
        row_F=[b for b, _, _ in where],
        position_F=[f for _, f, _ in where],
        context_ids_FC=ctx_ids,
        context_mask_FC=ctx_mask,
        tokens_FKL=tokens,
        mask_FKL=mask,
        logprobs_FKL=logprobs,
    )


def continuation_text(
    tokenizer: PreTrainedTokenizerBase, before: list[int], chunk: list[int]
) -> str:
    """The text ``chunk`` adds after ``before``, decoded together so word boundaries survive."""
    head = tokenizer.decode(before, skip_special_tokens=True)
    whole = tokenizer.decode(before + chunk, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head) :]
    return tokenizer.decode(chunk, skip_special_tokens=True)


def draft_texts(
    tokenizer: PreTrainedTokenizerBase, rollout: Rollout, drafts: Drafts
) -> tuple[list[str], list[list[str]]]:
    """(partial answer ``y[:f]`` per fork, K draft texts per fork), as the teacher sees text."""
    responses = rollout.response_ids_BT.cpu().tolist()
    tokens = drafts.tokens_FKL.cpu().tolist()
    masks = drafts.mask_FKL.cpu().tolist()
    partials, texts = [], []
    for i, (b, f) in enumerate(zip(drafts.row_F, drafts.position_F, strict=True)):
        before = responses[b][:f]
        partials.append(tokenizer.decode(before, skip_special_tokens=True))
        texts.append(
            [
                continuation_text(
                    tokenizer, before, [t for t, m in zip(tok, msk, strict=True) if m]
                )
                for tok, msk in zip(tokens[i], masks[i], strict=True)
            ]
        )
    return partials, texts


def is_unanimous(texts: list[str]) -> bool:
    """All K drafts are the same text: a group baseline gets no signal from this fork."""
    return len(set(texts)) <= 1
