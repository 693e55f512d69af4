"""One rank of ``test_fsdp.py::test_uneven_work_stays_in_lockstep`` (run by torchrun).

Every rank gets different work (prompts of different lengths, forks on rank 0 only, more
scored drafts on one rank, no SFT answer on another), which would deadlock a sharded model
without the lockstep helpers. The sharded student must sample exactly what the unsharded one
samples, and its gradients must be the unsharded ranks' gradients summed.

    torchrun --nproc_per_node 2 tests/trainer/fsdp_worker.py STUDENT DEVICE
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.drafts import make_drafts
from omniopd.trainer.models import Batch, freeze, load_model
from omniopd.trainer.rollout import rollout
from omniopd.trainer.update import (
    cross_entropy_backward,
    kl_anchor_backward,
    optimizer_step,
    policy_gradient_backward,
)


def main(student: str, device_name: str) -> None:
    torch.set_num_threads(1)
    device = dist_utils.init_from_env(torch.device(device_name), always=True)
    rank = dist_utils.rank()
    plain = load_model(student, device, torch.float32)
    sharded = fsdp.shard(load_model(student, torch.device("cpu"), torch.float32), device)
    refs = {  # the KL anchor's frozen model, sharded with the sharded student
        plain: freeze(load_model(student, device, torch.float32)),
        sharded: fsdp.shard(
            freeze(load_model(student, torch.device("cpu"), torch.float32)), device
        ),
    }
    assert fsdp.is_sharded(sharded) and not fsdp.is_sharded(plain)

    # Rollout: rank 1 has longer prompts and more rows; samples must not depend on sharding.
    prompts = [[5, 6, 7]] if rank == 0 else [[5, 6, 7, 8, 9, 10], [11, 12]]
    kw = {"temperature": 1.0, "eos_ids": [2], "pad_id": 0}
    samples = []
    for model in (plain, sharded):
        torch.manual_seed(100 + rank)
        samples.append(rollout(model, prompts, max_new_tokens=12, **kw))
    for a, b in zip(
        samples[0].samples.__dict__.values(), samples[1].samples.__dict__.values(), strict=True
    ):
        torch.testing.assert_close(a, b)

    # Drafts: forks on rank 0 only; rank 1 keeps pace without any.
    forks = [[1]] if rank == 0 else [[], []]
    drafts = []
    for model in (plain, sharded):
        torch.manual_seed(200 + rank)
        drafts.append(make_drafts(model, samples[0], forks, num_drafts=3, chunk_tokens=4, **kw))
    torch.testing.assert_close(drafts[0].tokens_FKL, drafts[1].tokens_FKL)

    # Backward passes with uneven micro-batch counts (rank 0: no PG rows, rank 1: no SFT rows).
    g = torch.Generator().manual_seed(rank)
    rows = 0 if rank == 0 else 5

    def batch(n: int) -> Batch:
        return Batch(
            torch.randint(4, 40, (n, 3), generator=g).to(device),
            torch.ones(n, 3, dtype=torch.bool, device=device),
            torch.randint(4, 40, (n, 4), generator=g).to(device),
            torch.ones(n, 4, dtype=torch.bool, device=device),
        )

    pg_batch, kl_batch, ce_batch = batch(rows), batch(3 + rank), batch(4 - 4 * rank)
    advantages = torch.linspace(-1, 1, rows)
    for model in (plain, sharded):
        kl_anchor_backward(
            model, refs[model], kl_batch, beta=0.3, estimator="exact", temperature=1.0,
            num_tokens=7.0, parts=2 + rank,
        )  # fmt: skip
        policy_gradient_backward(
            model, pg_batch, advantages, normalizer=3.0, temperature=1.0, parts=2
        )
        cross_entropy_backward(model, ce_batch, temperature=1.0, num_tokens=9.0, parts=3)
    for (name, p), q in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        summed = q.grad.clone()
        dist.all_reduce(summed)  # what the unsharded path's optimizer_step does
        torch.testing.assert_close(p.grad.full_tensor(), summed, atol=1e-6, rtol=1e-5, msg=name)

    # The optimiser step: the same clipped norm, the same new weights.
    norms = []
    for model in (plain, sharded):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        norms.append(optimizer_step(model, optimizer, scheduler, max_grad_norm=0.5))
    assert abs(norms[0] - norms[1]) <= 1e-5 * norms[0], norms
    for (name, p), q in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.full_tensor(), q.detach(), atol=1e-6, rtol=1e-5, msg=name)
    dist.barrier()
    if rank == 0:
        print("LOCKSTEP OK", flush=True)
    dist_utils.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Every check has passed and the process group is destroyed. Leave without the interpreter's
    # finalisation: on a loaded CPU a gloo worker thread can still be releasing tensors of its
    # last collective there, and once in a while that aborts the process (SIGABRT, "terminate
    # called without an active exception") after the test's work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
