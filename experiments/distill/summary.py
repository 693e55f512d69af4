"""Each world's summary: the figures of every arm, the goals judged, summary.json."""

from __future__ import annotations

import shlex
import statistics
from typing import Any

from distill.arms import ALIASES, NAMED_ARM, Arm, Budget
from distill.places import Places
from distill.runs import (
    DIAGNOSTICS,
    choose_lr,
    load_result,
    mean_or_none,
    resolve,
    seed_specs,
    sweep_specs,
)

# -- the report -----------------------------------------------------------------------------


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def collect(
    places: Places, budget: Budget, arms: list[Arm], references: dict[str, Any]
) -> dict[str, Any]:
    """Per arm: the chosen learning rate's runs (all seeds), their figures and curves."""
    out: dict[str, Any] = {}
    student = references["student"]
    for arm in arms:
        if arm.method is None:
            accs = [student[s]["accuracy_greedy"] for s in budget.seeds]
            sampled = [student[s]["accuracy_sampled"] for s in budget.seeds]
            out[arm.name] = {
                "what": arm.what,
                "complete": True,
                "mean": statistics.mean(accs),
                "std": std(accs),
                "seeds": list(budget.seeds),
                "accuracy_per_seed": accs,
                "sampled_mean": statistics.mean(sampled),
                "sampled_std": std(sampled),
                "teacher_tokens": 0,
                "repetition_rate": statistics.mean(
                    student[s]["repetition_rate"] for s in budget.seeds
                ),
                "truncated_rate": statistics.mean(
                    student[s]["truncated_rate"] for s in budget.seeds
                ),
                "wall_s": 0.0,
                "lr": None,
                "lr_sweep": {},
                "steps": 0,
                "command": None,
                "config": None,
                "curves": [],
            }
            continue
        if (resolved := resolve(arm, places, budget)) is None:
            out[arm.name] = {"what": arm.what, "complete": False, "lr_sweep": {}}
            continue
        arm = resolved
        sweep = [load_result(s, places, budget) for s in sweep_specs(arm, budget)]
        lr_sweep = {f"{r['lr']:g}": r["val"]["accuracy_greedy"] for r in sweep if r}
        if not all(sweep):
            out[arm.name] = {"what": arm.what, "complete": False, "lr_sweep": lr_sweep}
            continue
        lr = choose_lr(sweep)  # type: ignore[arg-type]
        runs = [next(r for r in sweep if r and r["lr"] == lr)]  # type: ignore[index]
        runs += [r for s in seed_specs(arm, lr, budget) if (r := load_result(s, places, budget))]
        accs = [r["final"]["accuracy_greedy"] for r in runs]
        sampled = [r["final"].get("accuracy_sampled") for r in runs]
        first = runs[0]
        out[arm.name] = {
            "what": arm.what,
            "complete": len(runs) == len(budget.seeds),
            "mean": statistics.mean(accs),
            "std": std(accs),
            "seeds": [r["seed"] for r in runs],
            "accuracy_per_seed": accs,
            "sampled_mean": mean_or_none(sampled),
            "sampled_std": std([s for s in sampled if s is not None]),
            "teacher_tokens": statistics.mean(r["teacher_tokens"] for r in runs),
            "repetition_rate": statistics.mean(r["final"]["repetition_rate"] for r in runs),
            "truncated_rate": statistics.mean(r["final"]["truncated_rate"] for r in runs),
            "wall_s": statistics.mean(r["train_s"] + r["eval_s"] for r in runs),
            "train_s": statistics.mean(r["train_s"] for r in runs),
            "forks_failed": sum(r["forks_failed"] for r in runs),
            "lr": lr,
            "lr_sweep": lr_sweep,
            "steps": first["steps"],
            "command": first["command"],
            "config": first["config"],
            "diagnostics": {
                k: mean_or_none([r["last_quarter"].get(k) for r in runs]) for k in DIAGNOSTICS
            },
            "curves": [{"seed": r["seed"], "points": r["curve"]} for r in runs],
        }
        if arm.matches is not None:
            out[arm.name]["answers_per_prompt"] = int(arm.flags[-1])
        if arm.method == "opd":
            # White-box OPD generates no teacher text: its teacher scores every response token.
            out[arm.name]["white_box_teacher_tokens"] = statistics.mean(
                r["white_box_teacher_tokens"] * budget.batch_size for r in runs
            )
    return out


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def mean_pm(entry: dict[str, Any]) -> str:
    return f"{pct(entry['mean'])} ± {pct(entry['std'])}"


def judge(arms: dict[str, Any]) -> list[str]:
    """The goals stated before the chain world's first run (GOALS), judged from the numbers;
    noise is the larger seed std of the two arms compared, and a goal is met or missed only when
    its difference from the mark is beyond it (otherwise: not shown)."""

    def ok(*names: str) -> bool:
        return all(
            n in arms and arms[n].get("complete", False) and "mean" in arms[n] for n in names
        )

    def versus(a: str, b: str) -> str:
        d = 100 * (arms[a]["mean"] - arms[b]["mean"])
        noise = 100 * max(arms[a]["std"], arms[b]["std"])
        size = "within" if abs(d) <= noise else "beyond"
        return (
            f"`{a}` {mean_pm(arms[a])} vs `{b}` {mean_pm(arms[b])}: {d:+.1f} points, "
            f"{size} the larger seed std ({noise:.1f})"
        )

    def verdict(a: str, b: str, margin: float = 0.0) -> str:
        """``a`` against ``b`` + ``margin`` points: met or missed only beyond the seed noise."""
        d = 100 * (arms[a]["mean"] - arms[b]["mean"])
        noise = 100 * max(arms[a]["std"], arms[b]["std"])
        if d - margin > noise:
            return "**met**"
        if margin - d > noise:
            return "**missed**"
        side = "above" if d > margin else "not above"
        return f"**not shown** (the means are {side} the mark, within the seed noise)"

    def tokens(name: str) -> str:
        return f"`{name}` {arms[name]['teacher_tokens']:,.0f}"

    named = NAMED_ARM
    lines = []
    for i, (other, what) in enumerate(
        (("sft-matched", "beats SFT at equal teacher tokens"), ("grpo", "beats GRPO")), start=1
    ):
        if ok(named, other):
            extra = ""
            if other == "sft-matched":
                extra = f" Teacher tokens per run: {tokens(named)}, {tokens(other)}."
            lines.append(
                f"1{'ab'[i - 1]}. `{named}` {what}: "
                f"{verdict(named, other)}. "
                f"{versus(named, other)}.{extra}"
            )
        else:
            lines.append(f"1{'ab'[i - 1]}. `{named}` {what}: not judged (arms incomplete).")
    if ok(named, "opd"):
        lines.append(
            f"1c. `{named}` (black box) within 2 points of white-box OPD or better: "
            f"{verdict(named, 'opd', margin=-2.0)}. {versus(named, 'opd')}."
        )
    else:
        lines.append(f"1c. `{named}` within 2 points of OPD: not judged (arms incomplete).")
    if ok("omniopd", "omniopd-random-forks"):
        lines.append(
            "2. Audits at entropy peaks beat as many audits at random positions: "
            f"{verdict('omniopd', 'omniopd-random-forks')}. "
            f"{versus('omniopd', 'omniopd-random-forks')}; teacher tokens per run "
            f"{tokens('omniopd')}, {tokens('omniopd-random-forks')}."
        )
    else:
        lines.append("2. Peak audits beat random audits: not judged (arms incomplete).")
    if ok("omniopd-char", "student"):
        lines.append(
            "3. OmniOPD with teacher-char beats the untrained student: "
            f"{verdict('omniopd-char', 'student')}. "
            f"{versus('omniopd-char', 'student')}."
        )
    else:
        lines.append("3. Teacher-char beats the student: not judged (arms incomplete).")
    return lines


def edge_note(arms: dict[str, Any], lrs: list[float]) -> list[str]:
    """Arms whose best learning rate is the grid's smallest or largest: their optimum may lie
    outside it, which the reader should know before comparing them."""
    if len(lrs) < 2:
        return []
    low, high = min(lrs), max(lrs)
    edge = [f"`{n}` ({a['lr']:g})" for n, a in arms.items() if a.get("lr") in (low, high)]
    if not edge:
        return []
    return [
        "Chosen at an edge of the grid, so a better rate may lie outside it: "
        + ", ".join(edge)
        + ".",
        "",
    ]


# A hosted teacher's price per million generated tokens, to turn teacher tokens into money:
# the order of the list output price of today's mid-size hosted frontier models. A toy token is
# not a hosted model's token; the column shows how cost scales between arms, not a bill.
PRICE_PER_MILLION = 15.0

GOALS = f"""\
Stated on 2026-12-07, before any run on the chain world, and judged below from its numbers;
on the arith world the same goals are judged for comparison.

1. On `chain`, **`{NAMED_ARM}`** (named before the run: the published objective plus each
   chunk's consensus teacher continuation trained on off-policy, this project's extension after
   LUFFY) (a) beats `sft-matched`, SFT given as many teacher tokens, (b) beats GRPO, and (c) is
   within 2 points of white-box OPD or better. It is named because on the arith world SFT's
   edge came from imitating the teacher's text, which the published objective alone never
   trains on.
2. Audits at entropy peaks beat as many audits at random positions, at equal teacher tokens
   (`omniopd` against `omniopd-random-forks`).
3. OmniOPD with teacher-char (another tokenizer) beats the untrained student.
"""


def _has_target(arm: dict[str, Any]) -> bool:
    return (arm.get("diagnostics") or {}).get("target_mean") is not None


def experiment_command(argv: list[str]) -> str:
    return "python experiments/toy_distill.py" + "".join(f" {shlex.quote(a)}" for a in argv)


def num(v: float | None, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def arm_label(name: str, a: dict[str, Any]) -> str:
    label = f"`{name}`"
    if name in ALIASES.values():
        label += " (= " + ", ".join(f"`{k}`" for k, v in ALIASES.items() if v == name) + ")"
    if "answers_per_prompt" in a:
        label += f" (k = {a['answers_per_prompt']})"
    return label
