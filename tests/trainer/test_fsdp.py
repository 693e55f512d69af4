"""``--fsdp``: ranks holding shards of the student compute what the same ranks without FSDP do.

Runs under torchrun on the CPU (gloo), 2 ranks, like ``test_e2e``'s data-parallel test; the
same tests check NCCL and bf16 on a GPU machine (``OMNIOPD_TEST_DEVICE=cuda``,
``OMNIOPD_TEST_DTYPE=bfloat16``, ``OMNIOPD_TEST_NPROC`` = the GPUs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from omniopd.trainer.checkpoint import latest_checkpoint, weights_digest

from .stack import TINY_LIKELIHOOD, Process, service_env
from .test_e2e import DEVICE, DTYPE, NPROC, check_run, common, omniopd_args, read_metrics

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# bf16 forward passes round differently once the weights differ in their last bits.
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4} if DTYPE == "float32" else {"atol": 1e-3, "rtol": 1e-2}
METRIC_TOLERANCE = {"abs": 1e-6, "rel": 1e-4} if DTYPE == "float32" else {"abs": 1e-4, "rel": 1e-2}


def torchrun(*args: str) -> str:
    command = [TORCHRUN, "--standalone", "--nproc_per_node", str(NPROC), *args]
    proc = Process.start(command, env=service_env())
    assert proc.proc.wait(timeout=400) == 0, proc.output[-6000:]
    return proc.output


def train(*argv: str) -> None:
    torchrun("-m", "omniopd.trainer", *argv)


def checkpoint(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def assert_same_checkpoint(unsharded: Path, sharded: Path) -> None:
    """Weights (loaded as any HF tool loads them) and optimiser states agree."""
    a = AutoModelForCausalLM.from_pretrained(unsharded / "model")
    b = AutoModelForCausalLM.from_pretrained(sharded / "model")
    assert json.loads((sharded / "model" / "config.json").read_text())["architectures"] == [
        type(a).__name__
    ]
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, **TOLERANCE, msg=name)
    # The digest recorded at saving is that of the weights saved.
    recorded = torch.load(sharded / "rng-rank0.pt", weights_only=False)["weights_sha256"]
    assert weights_digest(b) == recorded
    # The optimiser state: the same layout (numbered parameters), the same moments.
    sa = torch.load(unsharded / "trainer_state.pt", weights_only=False)["optimizer"]
    sb = torch.load(sharded / "trainer_state.pt", weights_only=False)["optimizer"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i, state in sa["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(sb["state"][i][key], value, **TOLERANCE, msg=f"{i} {key}")


def assert_same_metrics(rows_a: list[dict], rows_b: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):
        for key in keys:
            x, y = a.get(key), b.get(key)
            if x is None or y is None:
                assert x == y, (a["step"], key)
            else:
                assert y == pytest.approx(x, **METRIC_TOLERANCE), (a["step"], key)


def test_uneven_work_stays_in_lockstep(tiny_student):
    """Different prompt lengths, forks on one rank only, uneven micro-batches: the sharded
    student samples what the unsharded one samples, and its gradients are their sum."""
    worker = Path(__file__).with_name("fsdp_worker.py")
    assert "LOCKSTEP OK" in torchrun(str(worker), str(tiny_student), DEVICE)


def test_omniopd_matches_unsharded_and_resumes(toy_world, gateway, verifier, tmp_path):
    """Unsharded: 3 steps. Sharded: 2 steps, then --resume to 3. Same seeds, same data, the
    same teacher chunks (the gateway's cache answers the second run), so the same steps."""
    argv = [*omniopd_args(gateway, verifier), "--beta", "0.1", "--seed", "3"]
    unsharded, sharded = tmp_path / "unsharded", tmp_path / "sharded"
    train(*common(toy_world, unsharded, steps=3), *argv)
    train(*common(toy_world, sharded, steps=2), *argv, "--fsdp")
    assert_same_checkpoint(checkpoint(unsharded, 2), checkpoint(sharded, 2))

    train(*common(toy_world, sharded, steps=3), *argv, "--fsdp", "--resume")
    rows, sharded_rows = check_run(unsharded, 3), check_run(sharded, 3)
    assert latest_checkpoint(sharded) == checkpoint(sharded, 3)
    assert_same_checkpoint(checkpoint(unsharded, 3), checkpoint(sharded, 3))
    assert all(r["forks_scored"] > 0 for r in rows)
    keys = ("forks", "forks_scored", "reward_mean", "pg_loss", "kl", "loss", "grad_norm")
    assert_same_metrics(rows, sharded_rows, keys)


def test_opd_baseline_matches_unsharded_with_evaluation(toy_world, tmp_path):
    """White-box OPD: the teacher and the reference are sharded too; every rank evaluates."""
    unsharded, sharded = tmp_path / "unsharded", tmp_path / "sharded"
    argv = ["--method", "opd", "--opd-teacher", str(toy_world.teacher), "--eval-every", "2"]
    train(*common(toy_world, unsharded, steps=2), *argv)
    train(*common(toy_world, sharded, steps=2), *argv, "--fsdp")
    assert_same_checkpoint(checkpoint(unsharded, 2), checkpoint(sharded, 2))
    keys = ("opd_kl", "kl", "loss", "grad_norm", "eval_n", "eval_accuracy_greedy")
    assert_same_metrics(read_metrics(unsharded), read_metrics(sharded), keys)
    assert read_metrics(sharded)[-1]["eval_n"] == 8


def test_likelihood_objective_matches_unsharded(toy_world, gateway, verifier, tmp_path):
    """The published objective: unsharded, its update slices through the LM head and keeps the
    graph for the chunk term; sharded, it forms whole logits and takes one backward per
    forward. The two paths give the same steps."""
    argv = [*omniopd_args(gateway, verifier), *TINY_LIKELIHOOD, "--seed", "5"]
    unsharded, sharded = tmp_path / "unsharded", tmp_path / "sharded"
    train(*common(toy_world, unsharded, steps=2), *argv)
    train(*common(toy_world, sharded, steps=2), *argv, "--fsdp")
    assert_same_checkpoint(checkpoint(unsharded, 2), checkpoint(sharded, 2))
    rows = check_run(unsharded, 2)
    assert all(r["forks_scored"] > 0 for r in rows)
    keys = ("forks", "forks_scored", "target_mean", "chunk_loss", "kl", "loss", "grad_norm")
    assert_same_metrics(rows, check_run(sharded, 2), keys)
