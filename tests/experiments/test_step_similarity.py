"""``experiments/step_similarity.py``: the pairs it builds, and the script end to end on the
lexical metrics (the embedding metric loads all-MiniLM-L6-v2, tested with the verifier)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.experiments.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "step_similarity.py"
STEP = re.compile(r"\d+\) (Add|Subtract|Multiply by) \d+: \d+[-+*]\d+=(\d+)\.")


def test_pairs_are_a_right_step_a_one_digit_slip_and_another_step():
    pairs = load_script("step_similarity").step_pairs(50, seed=3)
    assert len(pairs) == 50
    for right, wrong, other in pairs:
        a, b, c = STEP.fullmatch(right), STEP.fullmatch(wrong), STEP.fullmatch(other)
        assert a and b and c, (right, wrong, other)
        # the slip: same length, exactly one character changed, and it is in the result
        assert len(right) == len(wrong)
        changed = [i for i, (x, y) in enumerate(zip(right, wrong, strict=True)) if x != y]
        assert len(changed) == 1 and changed[0] > right.rindex("=")
        assert a.group(2) != b.group(2)
        assert other.split(")")[0] != right.split(")")[0]  # another step number


def test_script_prints_a_table_and_a_json_line():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--problems", "40", "--metrics", "edit", "rouge1"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=True,
    )  # fmt: skip
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["problems"] == 40 and set(summary["metrics"]) == {"edit", "rouge1"}
    for row in summary["metrics"].values():
        # a slip keeps the sentence's form, so it stays far closer than another step does
        assert row["one_digit_wrong"] > row["another_step"]
        assert 0.0 <= row["wrong_above_other"] <= 1.0
