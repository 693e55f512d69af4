"""Micro-batches add up to the full batch; the schedule; checkpoints round-trip atomically."""

from __future__ import annotations

import random

import pytest
import torch

from omniopd.trainer.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)
from omniopd.trainer.models import Batch, load_model, load_tokenizer
from omniopd.trainer.update import (
    cross_entropy_backward,
    kl_anchor_backward,
    make_scheduler,
    micro_batches,
    policy_gradient_backward,
)


def test_micro_batches():
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 5)] or micro_batches(5, 2) == [
        slice(0, 3),
        slice(3, 5),
    ]
    assert micro_batches(2, 8) == [slice(0, 1), slice(1, 2)]
    assert micro_batches(0, 3) == []


def random_batch(vocab: int, n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(4, vocab, (n, 5), generator=g)
    prefix_mask = torch.ones(n, 5, dtype=torch.bool)
    prefix_mask[0, :2] = False  # left padding
    tokens = torch.randint(4, vocab, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.bool)
    mask[1, 3:] = False  # right padding
    return Batch(prefix, prefix_mask, tokens, mask)


def grads(model):
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("term", ["kl_exact", "kl_k3", "pg", "ce"])
def test_grad_accumulation_matches_one_batch(tiny_student, tiny_teacher, term):
    model = load_model(str(tiny_student), torch.device("cpu"), torch.float32)
    other = load_model(str(tiny_teacher), torch.device("cpu"), torch.float32)
    batch = random_batch(model.config.vocab_size)
    A = torch.linspace(-1, 1, len(batch))
    results = []
    for parts in (1, 3):
        if term.startswith("kl"):
            kl_anchor_backward(
                model,
                other,
                batch,
                beta=0.5,
                estimator=term.removeprefix("kl_"),
                temperature=0.9,
                num_tokens=float(batch.mask_BT.sum()),
                parts=parts,
            )
        elif term == "pg":
            policy_gradient_backward(model, batch, A, normalizer=2.0, temperature=1.0, parts=parts)
        else:
            cross_entropy_backward(
                model, batch, temperature=1.0, num_tokens=float(batch.mask_BT.sum()), parts=parts
            )
        results.append(grads(model))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in results[0])


def test_schedules():
    def lrs(schedule, warmup=2, total=6):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_scheduler(opt, schedule, warmup, total)
        out = []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert lrs("linear") == pytest.approx([1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25])
    cos = lrs("cosine")
    assert cos[2] == pytest.approx(1.0) and cos[3] > cos[4] > cos[5] > 0


def test_checkpoint_round_trip(tmp_path, tiny_student):
    model = load_model(str(tiny_student), torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(str(tiny_student))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, "linear", 0, 10)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    sched.step()
    fork_rng = random.Random(5)
    fork_rng.random()

    def save(step):
        return save_checkpoint(
            tmp_path,
            model=model,
            tokenizer=tokenizer,
            optimizer=opt,
            scheduler=sched,
            state=TrainState(step=step, data_position=step + 100),
            fork_rng=fork_rng,
            config_yaml="student: x\n",
            keep=2,
        )

    save(1)
    save(2)
    torch.manual_seed(42)
    path = save(3)
    expected_draw = torch.rand(3)  # what the run would have drawn next
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000003"]
    assert latest_checkpoint(tmp_path) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    expected_fork = fork_rng.random()

    # A resumed process: fresh optimizer and RNGs, then the checkpoint.
    reloaded = load_model(str(path / "model"), torch.device("cpu"), torch.float32)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    opt2 = torch.optim.AdamW(reloaded.parameters(), lr=1e-3)
    sched2 = make_scheduler(opt2, "linear", 0, 10)
    rng2 = random.Random(0)
    torch.manual_seed(999)
    state = load_trainer_state(path, optimizer=opt2, scheduler=sched2, fork_rng=rng2)
    assert (state.step, state.data_position) == (3, 103)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert rng2.random() == expected_fork
    torch.testing.assert_close(torch.rand(3), expected_draw)


def test_incomplete_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-0000009").mkdir(parents=True)
    assert latest_checkpoint(tmp_path) is None
