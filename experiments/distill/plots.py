"""The plots of a world: accuracy against updates and teacher tokens, the lr sweep."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from distill.arms import ARM_NAMES, ARMS, MAIN_ARMS
from distill.summary import PRICE_PER_MILLION, std


def plot(summary: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, refs = summary["arms"], summary["references"]
    price = summary.get("price_per_million", PRICE_PER_MILLION)
    student = arms.get("student", {}).get("mean")
    groups = [
        ("baselines and the main OmniOPD arms", [a for a in MAIN_ARMS if a != "student"]),
        ("OmniOPD variants", ["omniopd", *(a.name for a in ARMS if a.ablation)]),
    ]
    colors = plt.get_cmap("tab20").colors + plt.get_cmap("Dark2").colors  # one per arm

    def series(entry: dict[str, Any], key: str) -> tuple[list[float], list[float], list[float]]:
        """Mean over seeds at each evaluated step (steps every seed has), and the std."""
        curves = [{p["step"]: p for p in c["points"]} for c in entry.get("curves", [])]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        xs, ys, ss = [], [], []
        if student is not None:  # 0 updates, 0 teacher tokens: the initial student
            xs, ys, ss = [0.0], [student], [arms["student"]["std"]]
        for step in steps:
            accs = [c[step]["accuracy_greedy"] for c in curves]
            xs.append(float(statistics.mean(c[step][key] for c in curves)))
            ys.append(statistics.mean(accs))
            ss.append(std(accs))
        return xs, ys, ss

    for filename, key, xlabel, keep in (
        ("accuracy_vs_updates.png", "step", "student updates", lambda a: True),
        (
            "accuracy_vs_teacher_tokens.png",
            "teacher_tokens",
            "teacher tokens generated",
            lambda a: a.get("teacher_tokens", 0) > 0,
        ),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        for ax, (title, names) in zip(axes, groups, strict=True):
            for name in names:
                entry = arms.get(name)
                if not entry or "mean" not in entry or not keep(entry):
                    continue
                xs, ys, ss = series(entry, key)
                if len(xs) < 2:
                    continue
                color = colors[ARM_NAMES.index(name) % len(colors)]
                ax.plot(xs, ys, "o-", color=color, label=name, markersize=3)
                ax.fill_between(
                    xs,
                    [y - s for y, s in zip(ys, ss, strict=True)],
                    [y + s for y, s in zip(ys, ss, strict=True)],
                    color=color,
                    alpha=0.12,
                )
            if key == "teacher_tokens":
                if title.startswith("baselines"):
                    for name, style in (("opd", ":"), ("grpo", "-.")):
                        entry = arms.get(name)
                        if entry and "mean" in entry:
                            ax.axhline(
                                entry["mean"],
                                linestyle=style,
                                color="black",
                                alpha=0.6,
                                label=f"{name} (no teacher tokens), final",
                            )
                top = ax.secondary_xaxis(
                    "top", functions=(lambda t: t * price / 1e6, lambda d: d * 1e6 / price)
                )
                top.set_xlabel(rf"at \${price:g} per million teacher tokens (\$)", fontsize=8)
            for j, (name, r) in enumerate(refs["teachers"].items()):
                ax.axhline(
                    r["accuracy_greedy"],
                    linestyle="--",
                    color="gray",
                    alpha=0.5 + 0.3 * j,
                    label=f"{name} (reference)",
                )
            if student is not None:
                ax.axhline(student, linestyle=":", color="gray", label="initial student")
            ax.set(title=title, xlabel=xlabel, ylim=(0, 1))
            ax.legend(fontsize=7, loc="best")
        axes[0].set_ylabel("held-out accuracy (greedy), mean ± std over seeds")
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in arms.items():
        sweep = entry.get("lr_sweep") or {}
        if not sweep:
            continue
        lrs = sorted(sweep, key=float)
        ax.plot(
            [float(lr) for lr in lrs],
            [sweep[lr] for lr in lrs],
            "o-",
            label=name,
            color=colors[ARM_NAMES.index(name) % len(colors)],
            markersize=3,
        )
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="val accuracy (greedy), first seed",
        title="learning-rate sweep",
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "lr_sweep.png", dpi=110)
    plt.close(fig)
