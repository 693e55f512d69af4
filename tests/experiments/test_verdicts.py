"""The results page's verdicts on the stated goals (``experiments/distill/summary.py: judge``): a
goal is met or missed only when the difference from its mark is beyond the seed noise."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from distill.summary import judge


def arm(mean: float, std: float) -> dict:
    return {"mean": mean, "std": std, "complete": True, "teacher_tokens": 1000}


def arms(**overrides: tuple[float, float]) -> dict:
    out = {
        name: arm(0.20, 0.01)
        for name in (
            "student",
            "sft-matched",
            "grpo",
            "opd",
            "omniopd",
            "omniopd-random-forks",
            "omniopd-char",
            "omniopd-mixed",
        )
    }
    out |= {name.replace("_", "-"): arm(*v) for name, v in overrides.items()}
    return out


def line(lines: list[str], start: str) -> str:
    return next(x for x in lines if x.startswith(start))


def test_beyond_the_noise_is_met_or_missed():
    lines = judge(arms(omniopd_mixed=(0.30, 0.01), grpo=(0.35, 0.02)))
    assert "**met**" in line(lines, "1a.")  # +10 points, noise 1
    assert "**missed**" in line(lines, "1b.")  # -5 points, noise 2


def test_within_the_noise_is_not_shown_whichever_side_the_means_fall():
    lines = judge(arms(omniopd=(0.203, 0.017), omniopd_random_forks=(0.200, 0.005)))
    assert "**not shown** (the means are above the mark" in line(lines, "2.")
    lines = judge(arms(omniopd_char=(0.191, 0.023), student=(0.196, 0.0)))
    assert "**not shown** (the means are not above the mark" in line(lines, "3.")


def test_within_two_points_of_opd_is_judged_against_that_mark():
    # 1.5 points under OPD with noise 0.2: within 2 points, beyond the noise
    assert "**met**" in line(judge(arms(omniopd_mixed=(0.185, 0.002), opd=(0.2, 0.001))), "1c.")
    # 4.4 points under with noise 1: missed
    assert "**missed**" in line(judge(arms(omniopd_mixed=(0.195, 0.01), opd=(0.239, 0.005))), "1c.")
