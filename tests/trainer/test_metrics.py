"""Step metrics: the repetition-loop detector and the metrics file."""

from __future__ import annotations

import json

import torch

from omniopd.trainer.metrics import STEP_KEYS, MetricsWriter, has_repetition_loop, response_metrics


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
