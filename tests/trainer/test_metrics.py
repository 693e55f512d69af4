"""Step metrics: each method's fields and how ranks combine them, the repetition-loop detector
and the metrics file."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

from omniopd.trainer.metrics import (
    STEP_KEYS,
    DraftsMetrics,
    GRPOMetrics,
    LikelihoodMetrics,
    MetricsWriter,
    OPDMetrics,
    SFTMetrics,
    has_repetition_loop,
    merge_ranks,
    response_metrics,
)

METHODS = [DraftsMetrics, LikelihoodMetrics, OPDMetrics, SFTMetrics, GRPOMetrics]


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_every_field_of_every_method_says_how_ranks_combine_it(cls):
    for f in fields(cls):
        assert f.metadata.get("merge") in {"sum", "max", "min", "mean"}, f.name
    # the keys every metrics file has are either a field or, like step and lr, the loop's own
    loop_keys = {"step", "lr", "time_step_s"}
    assert {"loss", "kl", "grad_norm", "time_rollout_s", "time_update_s"} <= {
        f.name for f in fields(cls)
    }
    assert loop_keys.isdisjoint(f.name for f in fields(cls))


def test_ranks_combine_counts_by_sum_times_by_max_ratios_by_mean():
    a = DraftsMetrics(loss=0.25, kl=0.1, forks=3, forks_scored=2, time_wait_s=1.0, grad_norm=2.0)
    b = DraftsMetrics(loss=0.5, kl=0.2, forks=1, forks_scored=1, time_wait_s=3.0, grad_norm=4.0)
    m = merge_ranks([a, b])
    assert m["loss"] == 0.75 and m["forks"] == 4 and m["forks_scored"] == 3
    assert m["time_wait_s"] == 3.0 and m["grad_norm"] == 3.0
    assert abs(m["kl"] - 0.3) < 1e-12
    assert m["reward_mean"] is None  # no rank had one
    low, high = (
        LikelihoodMetrics(target_min=0.2, target_max=0.6),
        LikelihoodMetrics(target_min=0.1, target_max=0.9, target_mean=0.5),
    )
    m = merge_ranks([low, high])
    assert (m["target_min"], m["target_max"], m["target_mean"]) == (0.1, 0.9, 0.5)


def test_a_method_reports_only_what_applies_to_it():
    """A white-box OPD step calls no verifier and retries no teacher, so its metrics file says
    null for those; the counts and times every file has are 0 for it."""
    opd = OPDMetrics()
    names = {f.name for f in fields(opd)}
    assert "verifier_calls" not in names and "teacher_retries" not in names
    assert (opd.forks, opd.forks_failed, opd.teacher_tokens, opd.time_teacher_s) == (0, 0, 0, 0)
    assert "opd_kl" in names
    assert "answers_failed" in {f.name for f in fields(SFTMetrics)}
    assert "entropy_at_forks" in {f.name for f in fields(LikelihoodMetrics)}
    assert "verifier_calls" not in merge_ranks([opd])


def test_repetition_loops():
    assert has_repetition_loop([7] * 12)
    assert not has_repetition_loop([7] * 11)  # shorter than min_span
    assert has_repetition_loop([1, 2, 3, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 5])
    assert has_repetition_loop([5, 6] + [1, 2, 3, 4] * 3)
    assert not has_repetition_loop(list(range(40)))
    assert not has_repetition_loop([1, 2, 1, 2, 3, 1, 2, 1, 2, 3])


def test_response_metrics():
    tokens = torch.tensor([[4] * 12 + [2], [5, 6, 2] + [0] * 10])
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[0, :13] = True
    mask[1, :3] = True
    entropy = torch.where(mask, torch.full((2, 13), 0.5), torch.zeros(2, 13))
    m = response_metrics(tokens, mask, entropy, torch.tensor([False, True]))
    assert m == {
        "entropy_mean": 0.5,
        "repetition_rate": 0.5,
        "truncated_rate": 0.5,
        "response_tokens_mean": 8.0,
    }


def test_metrics_file_has_every_key_and_resume_drops_redone_steps(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        w.write({"step": step, "loss": float(step), "extra": 1})
    w.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(set(STEP_KEYS) <= set(r) for r in rows) and rows[0]["extra"] == 1
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by kill -9
    w = MetricsWriter(tmp_path, resume_step=2)
    w.write({"step": 3, "loss": 30.0})
    w.close()
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_a_run_from_step_zero_starts_the_metrics_file_afresh(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    w = MetricsWriter(tmp_path, resume_step=0)
    w.write({"step": 1, "loss": 1.0})
    w.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0)]
