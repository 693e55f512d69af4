"""Answer accuracy of a causal LM on ``{"prompt", "answer"}`` rows: greedy and sampled pass@1.

:func:`evaluate` is what the trainer calls every ``eval_every`` steps and what ``omniopd-eval``
runs: prompts are rendered with the model's chat template, decoded in batches with left padding
and a KV cache (``model.generate``), and each response's value after ``####`` is checked against
the reference (:func:`omniopd.toy.task.check_answer`). Sampled pass@1 draws one sample per problem
at ``temperature`` from a seeded RNG that leaves the global one untouched.

CLI::

    omniopd-eval --model PATH --data FILE [--limit N] [--batch-size B] [--max-new-tokens T]

prints a table, then as its last line one JSON object with ``n``, ``accuracy_greedy``,
``accuracy_sampled``, ``repetition_rate``, ``truncated_rate`` and more.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from omniopd.answers import check_answer, read_jsonl
from omniopd.log import add_logging_args, configure_from_args

log = logging.getLogger("omniopd.evaluation")

REPEAT_NGRAM = 4  # a response repeats itself when some 4-token run occurs ...
REPEAT_TIMES = 3  # ... at least 3 times


@dataclass(frozen=True)
class Decoded:
    """Responses to a list of prompts, in the prompts' order."""

    texts: list[str]
    tokens: list[list[int]]  # generated ids, up to and excluding eos and padding
    ended: list[bool]  # whether each response ended with eos within the budget


@dataclass(frozen=True)
class EvalResult:
    n: int
    accuracy_greedy: float
    accuracy_sampled: float | None  # None when sampling was not asked for
    repetition_rate: float  # greedy responses that loop (see REPEAT_NGRAM / REPEAT_TIMES)
    truncated_rate: float  # greedy responses without eos within max_new_tokens
    mean_response_tokens: float  # greedy
    seconds: float
    greedy: list[str] = field(repr=False, default_factory=list)
    sampled: list[str] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        """The figures without the responses: what the CLI prints as JSON."""
        out = asdict(self)
        del out["greedy"], out["sampled"]
        return out


def repeats(tokens: Sequence[int], n: int = REPEAT_NGRAM, times: int = REPEAT_TIMES) -> bool:
    """Whether some run of ``n`` tokens occurs at least ``times`` times in ``tokens``."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return any(c >= times for c in counts.values())


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def decode(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> Decoded:
    """Answer each prompt (a user message) with the model: greedy at ``temperature`` 0, else one
    sample from softmax(logits / temperature) over the full vocabulary (no top-k, no top-p).

    Prompts are sorted by length so each batch pads little, and answered in their given order.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = _model_device(model)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token: responses could never end")
    pad_id = eos_id if pad_id is None else pad_id
    prefixes = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prefixes]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    texts: list[str] = [""] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    sampling = temperature > 0
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            # Left padding: every prompt ends at the same column, so generation appends in step.
            ids_BT = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                ids_BT[b, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask_BT[b, width - len(encoded[i]) :] = 1
            out_BS = model.generate(
                input_ids=ids_BT.to(device),
                attention_mask=mask_BT.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_k=0 if sampling else None,
                top_p=1.0 if sampling else None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                use_cache=True,
            )
            for b, i in enumerate(rows):
                new = out_BS[b, width:].tolist()
                stop = new.index(eos_id) if eos_id in new else len(new)
                tokens[i] = new[:stop]
                ended[i] = stop < len(new)
                texts[i] = tokenizer.decode(tokens[i], skip_special_tokens=True)
    return Decoded(texts=texts, tokens=tokens, ended=ended)


def evaluate(
    model,
    tokenizer,
    rows: Sequence[Mapping[str, str]],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 1.0,
    seed: int = 0,
    sampled: bool = True,
) -> EvalResult:
    """Greedy accuracy and (if ``sampled``) sampled pass@1 of ``model`` on ``rows``.

    ``rows`` hold ``prompt`` (the user message) and ``answer`` (a worked answer ending in
    ``#### value``, or a bare value). The model is put in eval mode and each module's mode is
    restored afterwards (a gradient-checkpointed student marks only its decoder layers).
    """
    if not rows:
        raise ValueError("rows is empty: nothing to evaluate")
    start = time.perf_counter()
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        prompts = [r["prompt"] for r in rows]
        kw = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
        greedy = decode(model, tokenizer, prompts, temperature=0.0, **kw)
        sample = (
            decode(model, tokenizer, prompts, temperature=temperature, seed=seed, **kw)
            if sampled
            else None
        )
    finally:
        for module, mode in modes:
            module.training = mode
    n = len(rows)

    def accuracy(d: Decoded) -> float:
        return sum(check_answer(t, r["answer"]) for t, r in zip(d.texts, rows, strict=True)) / n

    return EvalResult(
        n=n,
        accuracy_greedy=accuracy(greedy),
        accuracy_sampled=accuracy(sample) if sample is not None else None,
        repetition_rate=sum(repeats(t) for t in greedy.tokens) / n,
        truncated_rate=sum(not e for e in greedy.ended) / n,
        mean_response_tokens=sum(len(t) for t in greedy.tokens) / n,
        seconds=time.perf_counter() - start,
        greedy=greedy.texts,
        sampled=sample.texts if sample is not None else [],
    )


def format_table(model: str, data: str, result: EvalResult) -> str:
    lines = [f"model: {model}", f"data:  {data}", "", f"{'metric':<22}{'value':>10}"]
    for key, value in result.summary().items():
        shown = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
        lines.append(f"{key:<22}{shown!s:>10}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniopd-eval", description="Greedy and sampled accuracy.")
    p.add_argument("--model", required=True, help="model folder (or hub name) for from_pretrained")
    p.add_argument("--data", required=True, type=Path, help='JSONL with "prompt" and "answer"')
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="for sampled pass@1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sample", action="store_true", help="greedy only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_logging_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_from_args(args)
    if args.limit is not None and args.limit < 1:
        parser().error(f"--limit must be >= 1, got {args.limit}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own logging says what is loading

    rows = list(read_jsonl(args.data))
    if args.limit is not None:
        rows = rows[: args.limit]
    if not rows:
        parser().error(f"--data {args.data} has no rows")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device)
    log.info("evaluating %s on %d rows of %s", args.model, len(rows), args.data)
    result = evaluate(
        model,
        tokenizer,
        rows,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        seed=args.seed,
        sampled=not args.no_sample,
    )
    print(format_table(str(args.model), str(args.data), result))
    print(json.dumps(result.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
