"""Data parallelism under ``torchrun``: one process per device, gradients averaged each step.

Every rank holds the whole model, samples its own shard of prompts and streams its own forks
to the teacher. A step may run several backward passes (the KL anchor while the teacher is
answering, then the policy gradient when scores arrive), so rather than DDP's per-backward
hooks the trainer sums gradients with one bucketed all-reduce per optimiser step: the same
arithmetic as ``DistributedDataParallel`` with gradient accumulation, and it holds even when
one rank has no fork to learn from. Losses are normalised by counts summed over all ranks, so
N ranks of batch B compute exactly the gradient of one process with batch N·B.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

BUCKET_NUMEL = 25_000_000 // 4  # ~25 MB of float32 per all-reduce, like DDP's default


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device, always: bool = False) -> torch.device:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); return the
    device this rank uses (``cuda:LOCAL_RANK`` on GPUs).

    Alone (no torchrun, or one process) there is no group, unless ``always`` (``--fsdp``,
    whose sharding needs one): then a group of one, under torchrun or not.
    """
    alone = int(os.environ.get("WORLD_SIZE", "1")) <= 1
    if (alone and not always) or is_distributed():
        return device
    backend = "gloo"
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    device_id = device if device.type == "cuda" else None
    if "RANK" not in os.environ:  # not started by torchrun: a group of this process alone
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, device_id=device_id
        )
    else:
        dist.init_process_group(backend, device_id=device_id)
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (e.g. a stop signal seen by one rank)."""
    return sum_floats([float(flag)], device)[0] > 0


def gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (sum) every gradient, in flat buckets; a missing gradient counts as zero."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= BUCKET_NUMEL:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
