"""The results page (docs/results.md), one section per world."""

from __future__ import annotations

from typing import Any

import yaml

from distill.summary import (
    GOALS,
    PRICE_PER_MILLION,
    _has_target,
    arm_label,
    edge_note,
    judge,
    mean_pm,
    num,
    pct,
)


def world_section(world: str, summary: dict[str, Any], notes: str | None) -> list[str]:
    """The page's section for one world, from that world's summary."""
    arms, b, refs = summary["arms"], summary["budget"], summary["references"]
    student = arms.get("student", {}).get("mean")
    price = summary.get("price_per_million", PRICE_PER_MILLION)
    wall = summary["wall_s"]
    lines = [
        f"## The {world} world",
        "",
        f"Toy world: recipe `{summary['recipe']}` ([toy.md](toy.md)); held-out accuracy is "
        f"greedy accuracy on {summary['eval_rows']} eval problems after the last update, "
        f"mean ± sample std over seeds, in percent. Every arm: the same student and data order "
        f"per seed, {b['steps']} updates of {b['batch_size']} prompts, answers up to "
        f"{b['max_new_tokens']} tokens, learning rate chosen per arm from "
        f"{{{', '.join(f'{lr:g}' for lr in b['lrs'])}}} ({b.get('lr_schedule', 'constant')} "
        f"schedule) by greedy accuracy on {summary['val_rows']} val problems with seed "
        f"{b['seeds'][0]}; that run and seeds {', '.join(map(str, b['seeds'][1:]))} at the same "
        "rate are the arm's. Wall time "
        "of the invocation that trained these runs: "
        + (f"{wall / 60:.0f} min" if wall is not None else "unknown")
        + f", on {summary['machine']}.",
        "",
        "Verdicts on the goals:",
        "",
        *judge(arms),
        "",
        f"| arm | held-out accuracy | Δ vs student | sampled pass@1 | lr | teacher tokens / run "
        f"| at ${price:g} / M tokens | repetition | truncated | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in arms.items():
        if "mean" not in a:
            lines.append(f"| {arm_label(name, a)} | (not finished) | | | | | | | | |")
            continue
        delta = (
            "–" if student is None or name == "student" else f"{100 * (a['mean'] - student):+.1f}"
        )
        seeds = "" if a.get("complete", True) else f" ({len(a['seeds'])} seeds so far)"
        lr = "–" if a["lr"] is None else f"{a['lr']:g}"
        cost = a["teacher_tokens"] * price / 1e6
        lines.append(
            f"| {arm_label(name, a)} | {mean_pm(a)}{seeds} | {delta} | {pct(a['sampled_mean'])}"
            f" ± {pct(a['sampled_std'])} | {lr} | {a['teacher_tokens']:,.0f} | ${cost:.2f} | "
            f"{pct(a['repetition_rate'])} | {pct(a['truncated_rate'])} | {a['wall_s']:.0f} |"
        )
    for name, r in refs["teachers"].items():
        limit = r.get("max_new_tokens")  # absent from summaries written before it was recorded
        label = (
            f"{name} (reference, answers up to {limit} tokens)" if limit else f"{name} (reference)"
        )
        lines.append(
            f"| {label} | {pct(r['accuracy_greedy'])} | | {pct(r['accuracy_sampled'])}"
            f" | | | | {pct(r['repetition_rate'])} | {pct(r['truncated_rate'])} | |"
        )
    opd_tokens = arms.get("opd", {}).get("white_box_teacher_tokens")
    lines += [
        "",
        "- *teacher tokens / run*: tokens the teacher generated through the gateway (OmniOPD's "
        "continuations, SFT's answers). White-box OPD generates none, but its teacher reads "
        "every response token"
        + (f" (about {opd_tokens:,.0f} per run)" if opd_tokens else "")
        + "; GRPO uses no teacher. The next column prices them at "
        f"${price:g} per million generated tokens, the order of a mid-size hosted frontier "
        "model's output price; a toy token is not a hosted model's token, so read it as the "
        "ratio between arms.",
        "- *repetition*: greedy held-out answers in which a 4-token run occurs 3 times or more; "
        "*truncated*: greedy held-out answers without end-of-sequence within "
        f"{b['max_new_tokens']} tokens (both at the last step, mean over seeds).",
        "- *wall s / run*: training steps plus the evaluations during training, mean over seeds "
        "(start-up excluded); the gateway and the verifier share the same 2 CPU cores.",
        "",
        f"![{world}: accuracy against student updates](results/{world}/accuracy_vs_updates.png)",
        "",
        f"![{world}: accuracy against teacher tokens]"
        f"(results/{world}/accuracy_vs_teacher_tokens.png)",
        "",
        f"### {world}: learning-rate sweep (val accuracy, seed {b['seeds'][0]})",
        "",
        "| arm | " + " | ".join(f"{lr:g}" for lr in b["lrs"]) + " |",
        "| --- |" + " --- |" * len(b["lrs"]),
    ]
    for name, a in arms.items():
        if name == "student":
            continue
        cells = []
        for lr in b["lrs"]:
            cell = pct(a.get("lr_sweep", {}).get(f"{lr:g}"))
            cells.append(f"**{cell}**" if a.get("lr") == lr else cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        *edge_note(arms, b["lrs"]),
        f"### {world}: the training signal (mean over the last quarter of the steps, all seeds)",
        "",
        "| arm | reward | advantage std | KL to π_ref | forks / step | scored | unanimous "
        "| entropy at forks | response tokens | rollout repetition | forks failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in arms.items():
        d = a.get("diagnostics")
        if not d:
            continue
        lines.append(
            f"| `{name}` | {num(d['reward_mean'])} | {num(d['advantage_std'])} | {num(d['kl'])} "
            f"| {num(d['forks'])} | {num(d['forks_scored'])} | {num(d['forks_unanimous'])} | "
            f"{num(d['entropy_at_forks'])} | {num(d['response_tokens_mean'])} | "
            f"{pct(d['repetition_rate'])} | {a.get('forks_failed', 0)} |"
        )
    published = {n: a["diagnostics"] for n, a in arms.items() if _has_target(a)}
    if published:
        lines += [
            "",
            "The published objective's arms (`--objective likelihood`): chunks audited per "
            "response, the fraction of response tokens they cover, the teacher's soft agreement "
            "count k (of N), the student's own π̄, the target π̂ (mean, and the mean of each "
            "step's min and max), and for `omniopd-mixed` the off-policy tokens per step and "
            "their probability under the student.",
            "",
            "| arm | chunks / response | audited | k | π̄ | π̂ | π̂ min | π̂ max | KL / unaudited "
            "token | mixed tokens | mixed p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, d in published.items():
            lines.append(
                f"| `{name}` | {num(d['chunks_per_response'])} | {pct(d['audited_fraction'])} "
                f"| {num(d['k_mean'])} | {num(d['prior_mean'])} | {num(d['target_mean'])} "
                f"| {num(d['target_min'])} | {num(d['target_max'])} | {num(d['kl'])} "
                f"| {num(d.get('mixed_tokens'))} | {num(d.get('mixed_prob'))} |"
            )
    lines += [
        "",
        f"### {world}: what the numbers show",
        "",
        notes.strip() if notes else "No analysis has been written for these numbers yet.",
        "",
        f"### {world}: how to reproduce",
        "",
        "```bash",
        summary["command"],
        "```",
        "",
        "The gateway's `teachers.yaml` (started with `omniopd-stack`; `$W` is the world's "
        "folder, `$GATEWAY` and `$VERIFIER` the addresses the stack prints):",
        "",
        "```yaml",
        summary["teachers_yaml"].rstrip(),
        "```",
        "",
        "<details><summary>Each arm's command at its chosen learning rate (first seed; the "
        "other seeds change only <code>--seed</code>), and its resolved config</summary>",
        "",
    ]
    for name, a in arms.items():
        if not a.get("command"):
            continue
        lines += [
            f"#### {world}: `{name}`",
            "",
            a["what"] + ".",
            "",
            "```bash",
            a["command"],
            "```",
            "",
            "```yaml",
            yaml.safe_dump(a["config"], sort_keys=False).rstrip(),
            "```",
            "",
        ]
    lines += ["</details>", ""]
    return lines


WORLD_ORDER = ("chain", "arith")  # the headline world first


def markdown(page: dict[str, Any], notes: dict[str, str | None]) -> str:
    """The results page: the goals, then one section per world in ``page["worlds"]``."""
    worlds = sorted(page["worlds"], key=lambda w: (w not in WORLD_ORDER, WORLD_ORDER.index(w)
                    if w in WORLD_ORDER else 0, w))  # fmt: skip
    lines = [
        "# Results: OmniOPD against SFT, GRPO and white-box OPD on the two toy worlds",
        "",
        "Written by `experiments/toy_distill.py` from the runs it lists; every figure comes "
        "from them. The two toy worlds ([toy.md](toy.md)): `arith`, answers of about 27 tokens "
        "in one format, and `chain`, 4-6 numbered operations with every step written out, "
        "answers of 73-124 tokens in which a mistake carries to the end. Earlier runs on the "
        "arith world, at other budgets, are kept in [results-history.md](results-history.md).",
        "",
        "## Goals",
        "",
        GOALS,
    ]
    if notes.get("page"):
        lines += ["## Where the runs stand", "", notes["page"].strip(), ""]
    for world in worlds:
        lines += world_section(world, page["worlds"][world], notes.get(world))
    return "\n".join(lines) + "\n"
