"""``--fsdp``: the student sharded across the ranks with FSDP2, for models that do not fit one GPU.

Each decoder layer, then the whole model, is wrapped by ``torch.distributed.fsdp.fully_shard``:
every rank keeps 1/N of the weights, gradients and optimiser states, and a forward (or
backward) of a layer all-gathers its weights (reduce-scatters its gradients) first. The frozen
reference and white-box teacher are sharded the same way.

Those gathers are collective, so every rank must run the same sequence of forward and backward
passes, while a step's work differs by rank: responses end at different lengths, a rank may
have fewer forks (or none), fewer scored forks, fewer micro-batches. Where they can differ the
trainer keeps the ranks in lockstep with the helpers below, each a no-op without FSDP:

- decoding: one all-reduce per decoded token says whether any rank still decodes; a rank that
  is done forwards a one-token placeholder until none does (``still_decoding``,
  ``idle_until_all_done``);
- passes that add to the loss: a rank with fewer micro-batches runs extra passes on a
  one-token input whose loss is zero (``passes_to_catch_up``, ``idle_pass``), and a rank with no
  drafts at all scores a fully masked placeholder batch (``placeholder_batch``);
- decisions (forward the drafts early? backpropagate the policy gradient?) are taken from
  counts summed over all ranks, so every rank takes the same branch (``any_rank``).

Gradients are summed over ranks by FSDP's reduce-scatter (divide factor 1, a plain SUM), the
arithmetic of ``distributed.sum_gradients``: losses are normalised by counts summed over all
ranks, so N ranks of batch B give the gradient of one process with batch N·B, as without FSDP.
Mixed precision stays ``models.autocast`` (bf16 compute over float32 master weights), so a
sharded run computes what an unsharded one does; the all-gathers move float32 weights.

Checkpoints hold full tensors (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``)
saved by rank 0 with ``save_pretrained``, and the optimiser state in ``optimizer.state_dict()``'s
own layout, so a checkpoint loads the same with or without FSDP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from omniopd.trainer.models import Batch


class NoDecoderLayers(SystemExit):
    """``--fsdp`` shards per decoder layer; the model must say which modules those are."""


def is_sharded(model: torch.nn.Module | None) -> bool:
    return isinstance(model, FSDPModule)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules of the classes in its ``_no_split_modules``
    (``LlamaDecoderLayer``, ``GPT2Block``, ...), as Hugging Face's own FSDP wrapping finds them."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise NoDecoderLayers(
            f"--fsdp: cannot find the decoder layers of {type(model).__name__}"
            f" (its _no_split_modules is {sorted(names)})"
        )
    return layers


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, LM head).

    ``model`` may be on the CPU: each layer's shard moves to ``device`` as it is wrapped, so
    the full model never sits on one GPU. Gradients are summed over ranks, not averaged.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # SUM, with no division at all
    # Hugging Face's generate() (evaluation) then keeps every rank decoding until all are done.
    model._is_fsdp_managed_module = True
    return model


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _all_reduce(value: float, model: torch.nn.Module, op: Any = dist.ReduceOp.SUM) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=_device(model))
    dist.all_reduce(t, op=op)
    return float(t.item())


def any_rank(model: torch.nn.Module, flag: bool) -> bool:
    """``flag``; for a sharded model, true on every rank when it is true on any."""
    if not is_sharded(model):
        return flag
    return _all_reduce(float(flag), model) > 0


def still_decoding(model: torch.nn.Module, busy: bool) -> bool:
    """Called once per decode step by every rank of a sharded model (``busy``: this rank has a
    token to decode): whether any rank has."""
    return _all_reduce(float(busy), model) > 0


@torch.no_grad()
def idle_forward(model: torch.nn.Module) -> None:
    """A forward pass on one placeholder token: the sharded model's gathers, and nothing else."""
    model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=_device(model)), use_cache=False)


def idle_until_all_done(model: torch.nn.Module) -> None:
    """A rank done decoding forwards placeholders while any other rank still decodes."""
    if not is_sharded(model):
        return
    while still_decoding(model, False):
        idle_forward(model)


def passes_to_catch_up(model: torch.nn.Module, passes: int) -> int:
    """Extra passes this rank runs after its ``passes`` so that every rank runs as many as the
    busiest (0 without FSDP). Every rank calls it before its first pass: it is collective."""
    if not is_sharded(model):
        return 0
    return int(_all_reduce(float(passes), model, dist.ReduceOp.MAX)) - passes


def idle_pass(
    model: torch.nn.Module, frozen: tuple[torch.nn.Module, ...] = (), *, backward: bool = True
) -> None:
    """One training pass that adds nothing: the student's forward on a placeholder token, the
    ``frozen`` models' forwards (as the real pass runs them), then a backward of zero."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=_device(model))
    logits = model(input_ids=ids, use_cache=False).logits
    with torch.no_grad():
        for other in frozen:
            other(input_ids=ids, use_cache=False)
    if backward:
        (logits.float().sum() * 0.0).backward()


def placeholder_batch(device: torch.device) -> Batch:
    """One sequence whose only continuation token is masked out: scores to a zero loss."""
    one = torch.zeros((1, 1), dtype=torch.long, device=device)
    return Batch(one, torch.ones_like(one, dtype=torch.bool), one, torch.zeros_like(one).bool())


def gradient_norm(params: list[torch.nn.Parameter], max_grad_norm: float) -> float:
    """The norm of the (sharded, already summed) gradients, clipped to ``max_grad_norm``
    when it is > 0. A parameter with no gradient gets zeros, as ``sum_gradients`` gives it."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, norm)
    return float(norm)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls this together; rank 0 gets the full weights on the CPU, others {}.

    A tied weight (an LM head sharing the embeddings) is kept once, under its first name, as
    ``save_pretrained`` writes it unsharded: the copies made on the CPU no longer share memory.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            full.pop(name, None)
    return full


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every rank calls this together; rank 0 gets the full optimiser state in the layout of
    ``optimizer.state_dict()`` (parameters numbered, not named), others {}."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[n]: s for n, s in named["state"].items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]
        ],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a full ``optimizer.state_dict()`` (every rank has it) into the sharded optimiser."""
    names = _param_names(model, optimizer)
    named = {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, named, options=StateDictOptions(full_state_dict=True)
    )
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        for key, value in saved.items():
            if isinstance(value, tuple):  # AdamW's betas come back as a list
                group[key] = value
