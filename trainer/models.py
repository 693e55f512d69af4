"""Loading models the way users do, and the forward passes every step shares.

Every policy in the trainer is the *tempered* distribution ``softmax(logits / τ)``: the rollout
samples from it, its entropy picks the forks, and the losses score it. With the default τ = 1
this is the model itself.

Sequences are always a left-padded prefix (prompt, or fork context) followed by a right-padded
continuation (response, or draft). Position ids count real tokens only, so a left-padded row
gets the same positions, and hence the same logits, as the unpadded row alone.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision: forward passes in ``dtype`` (bf16) on fp32 master weights.

    The trained student keeps float32 weights and optimiser states: a bf16 weight cannot hold
    an update smaller than about 1/256 of itself, so pure-bf16 AdamW at post-training learning
    rates (1e-6 on weights of 1e-2) would round most steps away. Matrix products run in bf16
    under autocast; softmax, log-softmax and the losses stay in float32.
    """
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The student's tokenizer, with a pad token (its EOS when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer at {path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``from_pretrained(path)`` in eval mode: no dropout, so sampling and scoring agree.

    ``dtype`` is the weights' storage: float32 for the trained student (see ``autocast``),
    the compute dtype for frozen models (the KL reference, a white-box teacher)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Gradient checkpointing of the decoder layers; returns how many layers it covers.

    Transformers recomputes a layer in the backward pass only when that layer is in training
    mode, and the trainer keeps its models in eval mode (no dropout). So the layers' own
    ``training`` flag is set, and nothing below them: attention and MLP submodules stay in eval
    mode, so dropout stays off and the recomputed activations equal the kept ones. Forward
    passes without gradients (the rollout) are not affected.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True
    return len(layers)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name of the KV-cache argument (``cache`` in transformers 5, ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def positions_from_mask(mask_BS: torch.Tensor) -> torch.Tensor:
    """Position ids (B, S) for a left-padded mask: 0 at each row's first real token."""
    return (mask_BS.long().cumsum(-1) - 1).clamp(min=0)


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS plus the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list | tuple):
        ids.update(int(i) for i in extra)
    if not ids:
        raise ValueError("the student has no end-of-sequence token")
    return sorted(ids)


@dataclass
class Batch:
    """A left-padded prefix and a right-padded continuation, scored as one sequence."""

    prefix_ids_BP: torch.Tensor
    prefix_mask_BP: torch.Tensor
    tokens_BT: torch.Tensor
    mask_BT: torch.Tensor

    def __len__(self) -> int:
        return self.tokens_BT.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Batch:
        return Batch(
            self.prefix_ids_BP[rows],
            self.prefix_mask_BP[rows],
            self.tokens_BT[rows],
            self.mask_BT[rows],
        )


def continuation_logits(model: torch.nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    """Tempered logits (B, T, V) that predict each continuation token from what precedes it."""
    ids_BS = torch.cat([batch.prefix_ids_BP, batch.tokens_BT], dim=1)
    mask_BS = torch.cat([batch.prefix_mask_BP, batch.mask_BT], dim=1).long()
    P, T = batch.prefix_ids_BP.shape[1], batch.tokens_BT.shape[1]
    out = model(
        input_ids=ids_BS,
        attention_mask=mask_BS,
        position_ids=positions_from_mask(mask_BS),
        use_cache=False,
    )
    # logits at position s predict token s + 1: the continuation is predicted by P-1 .. P+T-2.
    return out.logits[:, P - 1 : P + T - 1].float() / temperature


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log π(tokens) (B, T) under ``logits_BTV`` (already tempered)."""
    logp_BTV = F.log_softmax(logits_BTV, dim=-1)
    return logp_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → (ids (B, S), mask (B, S)) padded on the left."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = True
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → (ids (B, S), mask (B, S)) padded on the right."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
    return ids, mask


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids as the student reads them, exactly as ``omniopd.evaluation`` renders
    them: the prompt as a user message in the chat template, when the tokenizer has one."""
    if not getattr(tokenizer, "chat_template", None):
        return [list(tokenizer(p)["input_ids"]) for p in prompts]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
