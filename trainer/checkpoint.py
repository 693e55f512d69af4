"""Atomic checkpoints: everything a resumed run needs, written to a temp folder then renamed.

``output_dir/checkpoints/step-000012/`` holds ``model/`` (``save_pretrained``, with the
tokenizer, so any HF tool loads it), ``trainer_state.pt`` (step, data position, optimizer,
scheduler), ``rng-rank{r}.pt`` per process (python, numpy, torch, CUDA and fork RNGs, and the
teacher's characters per token measured so far) and ``config.yaml``. Each rank also records a
digest of its own weights, and saving fails if the ranks disagree (data parallelism must keep
them identical). A folder named ``step-*`` is complete by construction: it only gets that name
by a rename after every file in it was written and synced.

With ``--fsdp`` the weights and the optimiser state are gathered to rank 0 as full tensors and
written in the same layout, so a checkpoint loads the same with or without FSDP; the digest
is that of the gathered weights.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.teacher import CharsPerToken

PREFIX = "step-"
TMP_PREFIX = ".tmp-"


@dataclass
class TrainState:
    """What the loop carries between steps besides the weights."""

    step: int = 0
    data_position: int = 0


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(model: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 of every parameter's bytes, in order: equal on all ranks of a healthy run.

    ``full``: the weights as a full state dict, for a sharded model (``fsdp.full_state_dict``).
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = full[name] if full is not None else p
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(
    output_dir: Path,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    fork_rng: random.Random,
    config_yaml: str,
    keep: int,
    chars_per_token: CharsPerToken | None = None,
) -> Path:
    """Write a checkpoint of ``state.step`` atomically; every rank calls this together.

    Rank 0 writes the shared parts; each rank writes its own RNG states (the fork RNG too) and
    its running estimate of the teacher's characters per token. Older checkpoints
    beyond the newest ``keep`` are removed afterwards.
    """
    rank = dist_utils.rank()
    weights = optimizer_state = None
    if fsdp.is_sharded(model):  # gathered to rank 0 (the others get nothing), then as below
        weights = fsdp.full_state_dict(model)
        optimizer_state = fsdp.full_optimizer_state(model, optimizer)
        digest = dist_utils.gather_objects(weights_digest(model, weights) if rank == 0 else "")[0]
    else:
        digest = weights_digest(model)
        digests = dist_utils.gather_objects(digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights at step {state.step}: {digests}")
    root = checkpoint_dir(output_dir)
    final = root / step_name(state.step)
    tmp = root / f"{TMP_PREFIX}{step_name(state.step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist_utils.barrier()
    mine = {"weights_sha256": digest, "fork_rng": fork_rng.getstate()}
    if chars_per_token is not None:
        mine["teacher_chars_per_token"] = (chars_per_token.chars, chars_per_token.tokens)
    torch.save(rng_state() | mine, tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        model.save_pretrained(tmp / "model", state_dict=weights)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(
            {
                "step": state.step,
                "data_position": state.data_position,
                "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                "scheduler": scheduler.state_dict(),
                "fork_rng": fork_rng.getstate(),
                "world_size": dist_utils.world_size(),
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "config.yaml").write_text(config_yaml)
    dist_utils.barrier()
    if rank == 0:
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
            old = root / f"{TMP_PREFIX}old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        for stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale)
    dist_utils.barrier()
    return final


def load_trainer_state(
    path: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    fork_rng: random.Random,
    model: torch.nn.Module | None = None,
    chars_per_token: CharsPerToken | None = None,
) -> TrainState:
    """Restore optimizer, scheduler and RNGs from checkpoint ``path``; the weights are loaded
    separately, by ``from_pretrained(path / "model")``. ``model``: the optimizer's model, needed
    when it is sharded (the full optimiser state is then sharded like it)."""
    saved = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    if saved["world_size"] != dist_utils.world_size():
        raise SystemExit(
            f"checkpoint {path} was written by {saved['world_size']} processes, this run has"
            f" {dist_utils.world_size()}: resume with the same --nproc_per_node"
        )
    if fsdp.is_sharded(model):
        assert model is not None
        fsdp.load_optimizer_state(model, optimizer, saved["optimizer"])
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    mine = torch.load(
        path / f"rng-rank{dist_utils.rank()}.pt", map_location="cpu", weights_only=False
    )
    set_rng_state(mine)
    fork_rng.setstate(mine.get("fork_rng", saved["fork_rng"]))  # older checkpoints: rank 0's
    if chars_per_token is not None and "teacher_chars_per_token" in mine:
        chars_per_token.chars, chars_per_token.tokens = mine["teacher_chars_per_token"]
    return TrainState(step=saved["step"], data_position=saved["data_position"])
