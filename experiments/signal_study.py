"""How well does the verifier's reward tell a right draft from a wrong one on the toy task?

    python experiments/signal_study.py [--problems 200] [--drafts 8] [--teacher-samples 8]

OmniOPD can only move the student toward the teacher if, among the drafts of one context, the
ones the teacher would have written score higher. This script measures that directly, without
training: for each val problem it samples ``--drafts`` whole answers from the toy student and
``--teacher-samples`` from the toy teacher (temperature 1, as in training), scores every draft
with the verifier's own functions (the same similarity metrics and Beta-Binomial posterior with
the student prior as ``POST /v1/score``), and labels each draft right or wrong with the toy
task's answer checker. Whole answers stand in for chunks: a toy answer (about 27 tokens) is
about one and a half 16-token chunks, so a fork's chunk holds most of it.

Figures, per metric and similarity exponent γ (the scores are ``s**γ``; γ = 1 is the verifier):

- *AUC*: over problems whose drafts are mixed (some right, some wrong), the chance that a right
  draft's reward beats a wrong one's from the same problem (ties count half). 0.5 is no signal.
- *gap*: mean reward of right drafts minus wrong ones, same problems.
- *group std*: the reward's std within a problem's drafts, the scale of the group advantages.

The last line is one JSON object with every figure; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METRICS = ("embedding", "lexical", "hybrid")


def sample(model_dir: Path, prompts: list[str], n: int, seed: int, max_new_tokens: int):
    """``n`` answers per prompt at temperature 1: a list (per prompt) of ``n`` texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.evaluation import decode

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    runs = [
        decode(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=64,
            temperature=1.0,
            seed=seed + k,
        ).texts
        for k in range(n)
    ]
    return [[run[i] for run in runs] for i in range(len(prompts))]


def similarities(metric: str, drafts: list[str], teacher: list[str], embed, weight: float):
    """(K, M) draft-teacher and (K, K) draft-draft similarities, as the verifier computes them."""
    from omniopd.verifier.lexical import chrf_matrix, ngram_profile
    from omniopd.verifier.scoring import cosine_similarity

    def lexical(a: list[str], b: list[str]) -> np.ndarray:
        return chrf_matrix([ngram_profile(t, 6) for t in a], [ngram_profile(t, 6) for t in b])

    def embedding(a: list[str], b: list[str]) -> np.ndarray:
        return cosine_similarity(embed(a), embed(b))

    if metric == "embedding":
        return embedding(drafts, teacher), embedding(drafts, drafts)
    if metric == "lexical":
        return lexical(drafts, teacher), lexical(drafts, drafts)
    (e_KM, e_KK), (x_KM, x_KK) = (
        similarities(name, drafts, teacher, embed, weight) for name in ("embedding", "lexical")
    )
    return weight * e_KM + (1 - weight) * x_KM, weight * e_KK + (1 - weight) * x_KK


def rewards(s_KM: np.ndarray, s_KK: np.ndarray, alpha: float) -> np.ndarray:
    """The verifier's ``prob`` reward with the student prior (docs/method.md, step 5)."""
    from omniopd.verifier.scoring import beta_binomial_posterior, student_agreement

    mean, _ = beta_binomial_posterior(s_KM, student_agreement(s_KK, alpha), alpha)
    return mean


def auc(right: np.ndarray, wrong: np.ndarray) -> float:
    """P(a right draft's reward > a wrong one's), ties half."""
    diff = right[:, None] - wrong[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python experiments/signal_study.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("--world", type=Path, help="a toy world folder (default: the cached one)")
    p.add_argument("--problems", type=int, default=200, help="first N val problems")
    p.add_argument("--drafts", type=int, default=8, help="student answers per problem (K)")
    p.add_argument("--teacher-samples", type=int, default=8, help="teacher answers (M)")
    p.add_argument("--alpha", type=float, default=2.0, help="prior strength α")
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 4.0, 16.0, 64.0])
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    from omniopd.answers import check_answer, read_jsonl
    from omniopd.toy import ToyWorld, ensure_toy_world
    from omniopd.verifier.embedder import Embedder

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    start = time.perf_counter()
    world = ToyWorld.at(args.world) if args.world else ensure_toy_world()
    rows = list(read_jsonl(world.val))[: args.problems]
    prompts = [r["prompt"] for r in rows]
    print(
        f"sampling {args.drafts} student and {args.teacher_samples} teacher answers for "
        f"{len(rows)} val problems",
        file=sys.stderr,
    )
    drafts = sample(world.student, prompts, args.drafts, args.seed, args.max_new_tokens)
    teacher = sample(
        world.teacher, prompts, args.teacher_samples, args.seed + 1000, args.max_new_tokens
    )
    right = [[check_answer(d, r["answer"]) for d in ds] for ds, r in zip(drafts, rows, strict=True)]
    teacher_right = np.mean(
        [[check_answer(t, r["answer"]) for t in ts] for ts, r in zip(teacher, rows, strict=True)]
    )

    embedder = Embedder().load()
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, embedder.encode(missing), strict=True))
        return np.stack([cache[t] for t in texts])

    mixed = [i for i, r in enumerate(right) if 0 < sum(r) < len(r)]
    figures: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        sims = [similarities(metric, drafts[i], teacher[i], embed, 0.5) for i in mixed]
        for gamma in args.gammas:
            aucs, gaps, stds = [], [], []
            for (s_KM, s_KK), i in zip(sims, mixed, strict=True):
                r = rewards(s_KM**gamma, s_KK**gamma, args.alpha)
                ok = np.array(right[i])
                aucs.append(auc(r[ok], r[~ok]))
                gaps.append(float(r[ok].mean() - r[~ok].mean()))
                stds.append(float(r.std()))
            # No mixed problem (a student always right or always wrong): nothing to rank.
            figures[f"{metric} γ={gamma:g}"] = {
                "auc": float(np.mean(aucs)) if mixed else None,
                "gap": float(np.mean(gaps)) if mixed else None,
                "group_std": float(np.mean(stds)) if mixed else None,
            }

    print(
        f"\n{len(mixed)} of {len(rows)} problems have mixed drafts (student right "
        f"{np.mean([np.mean(r) for r in right]):.1%} of samples, teacher {teacher_right:.1%})"
    )
    print(f"{'metric':<18} {'AUC':>6} {'gap':>8} {'group std':>10}")
    for name, f in figures.items():
        if mixed:
            print(f"{name:<18} {f['auc']:>6.3f} {f['gap']:>8.4f} {f['group_std']:>10.4f}")
    summary = {
        "problems": len(rows),
        "mixed": len(mixed),
        "drafts": args.drafts,
        "teacher_samples": args.teacher_samples,
        "alpha": args.alpha,
        "student_sample_accuracy": float(np.mean([np.mean(r) for r in right])),
        "teacher_sample_accuracy": float(teacher_right),
        "figures": figures,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
