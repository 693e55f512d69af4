"""Benchmark of a real pretrained model on the CPU: SmolLM2-135M-Instruct (49,152-token vocabulary),
8 prompts, 256 new tokens, each figure against its baseline in the same run.

1. ``rollout_over_generate``: the trainer's rollout (``omniopd.trainer.rollout``, which also keeps
   every token's entropy and log-probability) in tokens per second, over ``model.generate`` with
   the same batch, length and sampling (temperature 1, no top-k or top-p, end-of-turn held back
   to 256 tokens in both). The two alternate, three times each; medians. Goal ≥ 0.9.
2. ``update_peak_over_forward``: the peak memory (resident set, ``VmHWM`` reset before each) of
   one update of the published objective (log-probabilities and the exact KL to the reference
   over every unaudited token, the chunk term, backward) over one forward pass of the same batch
   and length (no gradient), each in a fresh process. Goal ≤ 3. Measured as the trainer runs by
   default (every decoder layer's activations kept for the backward pass) and with
   ``--gradient-checkpointing`` (layers recomputed in the backward pass instead). Also over a
   forward pass with gradients (what any update keeps: the activations), to show what is the
   vocabulary's share.
3. the time split of one OmniOPD step (``--objective likelihood``, C = 32, M = 2, N = 4,
   ROUGE-1, gradient checkpointing: the settings of docs/quickstart.md's recipe) with SmolLM2 as its own teacher behind
   the real gateway (``hf`` provider) and the verifier: rollout, teacher, verifier, waiting, update (the second of two steps), and
   the trainer process's peak resident memory (student, reference, optimiser, activations).

Prints tables, then as its last line one JSON object. Run (after ``make models``):

    .venv/bin/python bench/real_model.py            # about 10 minutes on 2 CPU cores
    .venv/bin/python bench/real_model.py --quick    # 64 tokens, no step split: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

from omniopd.pretrained import ensure_pretrained, write_word_problems

BATCH = 8
PROMPT = (
    "Ana has {n} pencils. She buys 4 boxes with 6 pencils in each, then gives away 9 pencils. "
    "How many pencils does Ana have now? Solve it step by step, then end with '#### <number>'."
)


def prompts(tokenizer) -> list[list[int]]:
    out = []
    for i in range(BATCH):
        messages = [{"role": "user", "content": PROMPT.format(n=10 + i)}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def load(folder: Path):
    from omniopd.trainer.models import eos_token_ids, load_model, load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model = load_model(str(folder), torch.device("cpu"), torch.float32)
    return model, tokenizer, eos_token_ids(model, tokenizer)


# -- 1. rollout against generate ----------------------------------------------------------------


def time_rollout(model, tokenizer, eos, ids, tokens: int) -> float:
    from omniopd.trainer.rollout import rollout

    t0 = time.perf_counter()
    r = rollout(
        model,
        ids,
        max_new_tokens=tokens,
        temperature=1.0,
        eos_ids=eos,
        pad_id=tokenizer.pad_token_id,
        min_new_tokens=tokens,
    )
    seconds = time.perf_counter() - t0
    assert int(r.response_mask_BT.sum()) == BATCH * tokens
    return BATCH * tokens / seconds


def time_generate(model, tokenizer, ids, tokens: int) -> float:
    from omniopd.trainer.models import left_pad

    input_ids, mask = left_pad(ids, tokenizer.pad_token_id)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask.long(),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - t0
    assert out.shape[1] - input_ids.shape[1] == tokens
    return BATCH * tokens / seconds


def rollout_vs_generate(folder: Path, tokens: int, rounds: int) -> dict[str, float]:
    model, tokenizer, eos = load(folder)
    ids = prompts(tokenizer)
    torch.manual_seed(0)
    time_rollout(model, tokenizer, eos, ids, 8)  # warm-up
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(time_rollout(model, tokenizer, eos, ids, tokens))
        theirs.append(time_generate(model, tokenizer, ids, tokens))
    r, g = statistics.median(ours), statistics.median(theirs)
    return {"rollout_tokens_s": r, "generate_tokens_s": g, "rollout_over_generate": r / g}


# -- 2. peak memory, each measurement in a fresh process ---------------------------------------

KINDS = ("forward", "forward_grad", "update", "update_checkpointed")


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(kind: str, folder: str, tokens: int) -> None:
    """Child process: load, build the batch, reset the peak, run ``kind``, print the peak."""
    from omniopd.trainer.anchors import audited_mask, peak_entropy_anchors
    from omniopd.trainer.losses import chunk_likelihood_loss, unaudited_kl_loss
    from omniopd.trainer.models import Batch, checkpoint_layers, continuation_logits, left_pad
    from omniopd.trainer.token_terms import token_terms

    torch.set_num_threads(1)
    model, tokenizer, _ = load(Path(folder))
    if kind == "update_checkpointed":
        checkpoint_layers(model)
    ref = load(Path(folder))[0] if kind.startswith("update") else None
    if ref is not None:
        for p in ref.parameters():
            p.requires_grad_(False)
    ids, mask = left_pad(prompts(tokenizer), tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(0)
    responses = torch.randint(100, 40000, (BATCH, tokens), generator=g)
    batch = Batch(ids, mask, responses, torch.ones_like(responses, dtype=torch.bool))
    entropy = torch.rand((BATCH, tokens), generator=g)
    audited = audited_mask(
        peak_entropy_anchors(entropy, batch.mask_BT, max_chunks=2, chunk_tokens=32),
        (BATCH, tokens),
        32,
    )
    if kind.startswith("update"):  # a first step, so that the optimiser-free parts are warm
        model.zero_grad()
    Path("/proc/self/clear_refs").write_text("5")
    base = rss_kib("VmRSS")
    if kind == "forward":
        with torch.no_grad():
            continuation_logits(model, batch, 1.0)
    elif kind == "forward_grad":
        logits = continuation_logits(model, batch, 1.0)
        logits.sum().backward()
    else:
        logp, kl = token_terms(model, ref, batch, temperature=1.0)
        weight = audited.float() * 0.5
        loss, _ = chunk_likelihood_loss(logp, weight, num_responses=BATCH)
        kl_loss, _ = unaudited_kl_loss(
            kl, ~audited, beta=0.1, num_responses=BATCH, num_unaudited=float((~audited).sum())
        )
        (loss + kl_loss).backward()
    print(json.dumps({"peak_mib": (rss_kib("VmHWM") - base) / 1024}))


def peak_mib(kind: str, folder: Path, tokens: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure",
            kind,
            "--folder",
            str(folder),
            "--tokens",
            str(tokens),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# -- 3. one OmniOPD step, end to end ------------------------------------------------------------


def step_split(folder: Path, tokens: int, workdir: Path) -> dict[str, float]:
    from omniopd.stack import Stack, StackConfig
    from omniopd.trainer.cli import main as train

    teachers = {
        "teachers": [{"name": "smol", "provider": "hf", "model": str(folder), "max_tokens": 64}]
    }
    (workdir / "teachers.yaml").write_text(yaml.safe_dump(teachers))
    data = write_word_problems(workdir / "problems.jsonl", 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    config = StackConfig(teachers=workdir / "teachers.yaml", redis=False, env=env, log_dir=workdir)
    out = workdir / "run"
    with Stack(config) as stack:
        Path("/proc/self/clear_refs").write_text("5")  # the trainer's own peak from here
        train(
            [
                *("--student", str(folder), "--dataset", str(data), "--output-dir", str(out)),
                *("--method", "omniopd", "--objective", "likelihood", "--metric", "rouge1"),
                *("--gateway", stack.gateway, "--teacher", "smol", "--verifier", stack.verifier),
                *("--chunk-tokens", "32", "--chunks-per-response", "2", "--teacher-samples", "4"),
                *("--batch-size", str(BATCH), "--max-new-tokens", str(tokens), "--steps", "2"),
                *("--eval-every", "0", "--save-every", "0", "--device", "cpu", "--lr", "1e-6"),
                "--gradient-checkpointing",
            ]
        )
        trainer_peak = rss_kib("VmHWM") / 1024
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    keys = ("time_rollout_s", "time_teacher_s", "time_verifier_s", "time_wait_s", "time_update_s")
    return {k: row[k] for k in (*keys, "time_step_s", "teacher_tokens", "response_tokens_mean")} | {
        "trainer_peak_rss_mib": trainer_peak
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64 tokens, one round, no step split")
    p.add_argument("--measure", choices=[*KINDS], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        measure(args.measure, args.folder, args.tokens)
        return 0
    folder = ensure_pretrained("smollm2")
    tokens = 64 if args.quick else args.tokens
    torch.set_num_threads(1)
    result: dict[str, Any] = {"model": folder.name, "batch": BATCH, "new_tokens": tokens}
    result |= rollout_vs_generate(folder, tokens, rounds=1 if args.quick else 3)
    peaks = {kind: peak_mib(kind, folder, tokens) for kind in KINDS}
    result |= {f"peak_mib_{k}": v for k, v in peaks.items()}
    result["update_peak_over_forward"] = peaks["update"] / peaks["forward"]
    result["update_peak_over_forward_grad"] = peaks["update"] / peaks["forward_grad"]
    result["checkpointed_update_peak_over_forward"] = (
        peaks["update_checkpointed"] / peaks["forward"]
    )
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            result |= step_split(folder, tokens, Path(tmp))

    print(f"\nSmolLM2-135M-Instruct on the CPU (1 thread), batch {BATCH}, {tokens} new tokens\n")
    print(f"{'':36}{'value':>12}")
    print(f"{'rollout tokens/s':36}{result['rollout_tokens_s']:>12.1f}")
    print(f"{'generate tokens/s':36}{result['generate_tokens_s']:>12.1f}")
    print(f"{'rollout / generate (goal >= 0.9)':36}{result['rollout_over_generate']:>12.2f}")
    for kind in KINDS:
        print(f"{'peak MiB: ' + kind:36}{peaks[kind]:>12.0f}")
    print(f"{'update / forward (goal <= 3)':36}{result['update_peak_over_forward']:>12.2f}")
    ratio = result["checkpointed_update_peak_over_forward"]
    print(f"{'  checkpointed update / forward':36}{ratio:>12.2f}")
    print(f"{'update / forward with grad':36}{result['update_peak_over_forward_grad']:>12.2f}")
    if "time_step_s" in result:
        print("\none OmniOPD step (C = 32, M = 2, N = 4, SmolLM2 teacher via the gateway)")
        for key in ("time_rollout_s", "time_teacher_s", "time_verifier_s", "time_wait_s",
                    "time_update_s", "time_step_s"):  # fmt: skip
            print(f"{key:36}{result[key]:>12.2f}")
        print(f"{'trainer process peak RSS, MiB':36}{result['trainer_peak_rss_mib']:>12.0f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
