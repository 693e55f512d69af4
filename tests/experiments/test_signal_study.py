"""``experiments/signal_study.py``: its ranking figure on hand-made rewards, and the whole script
on a few problems of the trained toy world (built by ``make test`` before the tests run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.experiments.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "signal_study.py"


def test_auc_counts_wins_and_half_ties():
    auc = load_script("signal_study").auc
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    # (0.5 vs 0.5: tie) and (0.5 vs 0.4: win) -> (0.5 + 1) / 2
    assert auc(np.array([0.5]), np.array([0.5, 0.4])) == 0.75


@pytest.mark.slow
def test_the_script_scores_every_metric_and_exponent(tmp_path):
    out = tmp_path / "signal.json"
    args = ["--problems", "12", "--drafts", "4", "--teacher-samples", "3", "--gammas", "1", "4"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert last["problems"] == 12 and last["drafts"] == 4 and last["teacher_samples"] == 3
    assert sorted(last["figures"]) == sorted(
        f"{m} γ={g}" for m in ("embedding", "lexical", "hybrid") for g in (1, 4)
    )
    # The trained student is right on some samples and wrong on others for a few problems.
    assert 0 < last["mixed"] <= 12
    for figure in last["figures"].values():
        assert 0.0 <= figure["auc"] <= 1.0
        assert figure["group_std"] >= 0.0
