"""Can the verifier's similarity tell a wrong step of a chain answer from a right one?

    python experiments/step_similarity.py [--problems 300] [--seed 0] [--metrics ...]

An audit of the chain world (docs/toy.md) compares a chunk of about 16 tokens, one written step
such as ``2) Subtract 45: 247-45=202.``, with the teacher's continuations of the same prefix.
If the similarity scores a step whose result is off by one digit nearly as high as the right
step, the agreement cannot separate right from wrong drafts, and neither objective has a signal
to learn from. This script measures it without any model: for ``--problems`` problems of the
chain task (seeded), one step each, it scores the right step against

- *one digit wrong*: the same step with one digit of its result changed (what a slip looks like);
- *another step*: a different step of the same answer (a different sentence of the same form);

with the verifier's own functions (``embedding``: cosine of all-MiniLM-L6-v2 embeddings clipped
at 0, as ``POST /v1/score`` computes it; ``edit``; ``rouge1``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METRICS = ("embedding", "edit", "rouge1")


def step_pairs(problems: int, seed: int) -> list[tuple[str, str, str]]:
    """``(right step, the same step with one digit of its result changed, another step)``."""
    from omniopd.toy.chain import sample_problem

    rng = random.Random(seed)
    out = []
    while len(out) < problems:
        # the numbered sentences, "2) Subtract 45: 247-45=202.", without the final "#### 135"
        steps = re.findall(r"\d+\) [^.]*\.", sample_problem(rng).answer)
        i, j = rng.sample(range(len(steps)), 2)
        right = steps[i]
        head, result = right[:-1].rsplit("=", 1)
        k = rng.randrange(len(result))
        digit = rng.choice([d for d in "0123456789" if d != result[k]])
        out.append((right, f"{head}={result[:k]}{digit}{result[k + 1 :]}.", steps[j]))
    return out


def similarities(metric: str, right: list[str], others: list[list[str]]) -> list[np.ndarray]:
    """The verifier's similarity of ``right[i]`` and ``column[i]``, per pair, for each column of
    ``others`` (the embedding model is loaded, and ``right`` encoded, once)."""
    from omniopd.verifier.lexical import edit_similarity, rouge1_f1, rouge1_tokens

    if metric == "edit":
        pair = edit_similarity
    elif metric == "rouge1":

        def pair(x: str, y: str) -> float:
            return rouge1_f1(rouge1_tokens(x), rouge1_tokens(y))
    else:
        from omniopd.verifier.embedder import Embedder
        from omniopd.verifier.scoring import cosine_similarity

        embedder = Embedder().load()
        e_right = embedder.encode(right)
        out = []
        for column in others:
            e_col = embedder.encode(column)
            pairs = zip(e_right, e_col, strict=True)
            out.append(np.array([cosine_similarity(x[None], y[None])[0, 0] for x, y in pairs]))
        return out
    return [np.array([pair(x, y) for x, y in zip(right, col, strict=True)]) for col in others]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/step_similarity.py", description=__doc__)
    p.add_argument("--problems", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    args = p.parse_args(argv)
    if args.problems < 1:
        p.error("--problems must be at least 1")
    pairs = step_pairs(args.problems, args.seed)
    right, wrong, other = (list(column) for column in zip(*pairs, strict=True))
    result: dict[str, dict[str, float]] = {}
    print(
        f"{args.problems} steps of the chain task (seed {args.seed}); mean similarity to the right step"
    )
    print(f"{'metric':<10} {'one digit wrong':>16} {'another step':>13} {'wrong > other':>14}")
    for metric in args.metrics:
        s_wrong, s_other = similarities(metric, right, [wrong, other])
        result[metric] = {
            "one_digit_wrong": round(float(s_wrong.mean()), 4),
            "another_step": round(float(s_other.mean()), 4),
            "wrong_above_other": round(float((s_wrong > s_other).mean()), 4),
        }
        row = result[metric]
        print(
            f"{metric:<10} {row['one_digit_wrong']:>16.3f} {row['another_step']:>13.3f} "
            f"{row['wrong_above_other']:>14.3f}"
        )
    print(json.dumps({"problems": args.problems, "seed": args.seed, "metrics": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
