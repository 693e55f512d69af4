"""Benchmark of the trainer: is the teacher's latency paid once per step, what does auditing only
the entropy peaks save, and where does a step's time go.

Each figure is compared with its baseline in the same run:

1. latency hiding: OmniOPD steps of 16 prompts with up to 4 forks each (K = 4 drafts, M = 8
   teacher chunks, L = 16; and the same with ``--objective likelihood``, 4 chunks of 16 tokens
   per response, N = 8) against the real gateway, whose backend (``bench/backends.py``, an
   OpenAI-compatible stand-in) answers after a fixed 500 ms, versus one answering at once. Two
   trainers with the same seed and data take turns, step by step, so drift on this shared
   machine hits both arms alike. Done twice: on the toy's short answers, and on 512-token
   responses (EOS held back by ``min_new_tokens``), the length of real reasoning traces.
   ``latency_step_ratio`` is the median 500 ms step over the median 0 ms step at 512 tokens;
   ``exposed_latency_s`` is how much of the 500 ms a step pays (1 fork at a time would be F x).
2. audit cost: teacher output tokens per step with peak-entropy forks versus auditing every
   L-token chunk of every response, on the toy's short answers and on 512-token responses.
   Both schemes ask M chunks of the same size per audited chunk, so the tokens are counted
   from the requests the trainer builds (M x max_tokens, a shorter last chunk for the
   every-chunk scheme) on real rollouts of the student.
3. time split of the 0 ms steps: rollout, forks + drafts, KL anchor and drafts' forward (while
   the teacher answers), waiting, and the rest of the update.

Prints tables, then as its last line one JSON object with the figures and ratios. Run:

    .venv/bin/python bench/trainer.py            # a few minutes on 2 CPU cores
    .venv/bin/python bench/trainer.py --quick    # fewer steps, a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import Backend
from gateway import Gateway

from omniopd.trainer.config import TrainConfig

LATENCY_S = 0.5
PROMPTS = 16
SHORT_TOKENS = 64  # the toy's answers are ~25 tokens; this limit is rarely reached
LONG_TOKENS = 512


def toy_world(kind: str, workdir: Path):
    """The trained toy world (built once, cached) or the tiny random one."""
    if kind == "trained":
        try:
            from omniopd.toy import ensure_toy_world

            return ensure_toy_world(), "trained"
        except (ImportError, AttributeError) as err:
            print(f"trained toy world unavailable ({err}); using build_tiny", file=sys.stderr)
    from omniopd.toy import build_tiny

    return build_tiny(workdir / "tiny"), "tiny (random weights)"


class Verifier:
    """``omniopd-verifier`` in its own process (all-MiniLM-L6-v2 on the CPU)."""

    def __init__(self) -> None:
        import re
        import subprocess
        import threading

        command = [sys.executable, "-m", "omniopd.verifier.cli", "--port", "0", "--device", "cpu"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if m := re.search(r"verifier on (http://[\d.]+:\d+)", line):
                self.url = m[1]
                break
        else:
            raise RuntimeError("the verifier did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the verifier never became ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def config(world, out: Path, **fields: Any) -> TrainConfig:
    base = {
        "student": str(world.student),
        "dataset": str(world.train),
        "eval_every": 0,
        "save_every": 0,
        "output_dir": str(out),
        "batch_size": PROMPTS,
        "chunks_per_response": 4,
        "num_drafts": 4,
        "teacher_samples": 8,
        "chunk_tokens": 16,
        "max_retries": 0,
    }
    return TrainConfig.model_validate(base | fields)


def latency_arms(
    world,
    gateway: str,
    verifier: str,
    workdir: Path,
    tokens: int,
    steps: int,
    objective: str = "drafts",
):
    """Per-step wall times and metrics of the 0 ms and 500 ms arms, taken in turns."""
    from omniopd.trainer.likelihood import likelihood_step
    from omniopd.trainer.loop import omniopd_step
    from omniopd.trainer.train import Trainer

    step_fn = likelihood_step if objective == "likelihood" else omniopd_step
    length = {"max_new_tokens": tokens, "min_new_tokens": tokens if tokens > SHORT_TOKENS else 0}
    arms = {}
    for name, teacher in (("0ms", "zero"), ("500ms", "slow")):
        cfg = config(
            world,
            workdir / f"{name}-{tokens}-{objective}",
            method="omniopd",
            objective=objective,
            gateway=gateway,
            verifier=verifier,
            teacher=teacher,
            **length,
        )
        arms[name] = Trainer(cfg)
    times: dict[str, list[float]] = {name: [] for name in arms}
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    try:
        for step in range(steps + 1):  # step 0 warms up (allocations, first connections)
            for name, trainer in arms.items():
                t0 = time.perf_counter()
                metrics = step_fn(trainer.run, trainer.next_examples())
                elapsed = time.perf_counter() - t0
                trainer.state.data_position += 1
                if step:
                    times[name].append(elapsed)
                    rows[name].append(metrics.as_dict())
    finally:
        for trainer in arms.values():
            trainer.close()
    return times, rows


def audit_tokens(world, tokens: int, batches: int) -> dict[str, float]:
    """Teacher output tokens per step: peak-entropy forks vs every L-token chunk."""
    from omniopd.trainer.data import batch_indices, load_examples
    from omniopd.trainer.drafts import draft_texts, is_unanimous, make_drafts
    from omniopd.trainer.forks import content_mask, peak_entropy_forks
    from omniopd.trainer.models import encode_prompts, eos_token_ids, load_model, load_tokenizer
    from omniopd.trainer.rollout import rollout

    cfg = config(world, Path("."), method="grpo")  # only the knobs are read
    L, M = cfg.chunk_tokens, cfg.teacher_samples
    tokenizer = load_tokenizer(str(world.student))
    model = load_model(str(world.student), torch.device("cpu"), torch.float32)
    eos = eos_token_ids(model, tokenizer)
    rows = load_examples(str(world.train), "train", "prompt", "answer", need_answer=False)
    peak = every = unanimous_saved = lengths = 0.0
    for b in range(batches):
        prompts = [
            rows[i].prompt for i in batch_indices(b, num_rows=len(rows), batch_size=PROMPTS, seed=0)
        ]
        r = rollout(
            model,
            encode_prompts(tokenizer, prompts),
            max_new_tokens=tokens,
            temperature=cfg.temperature,
            eos_ids=eos,
            pad_id=tokenizer.pad_token_id,
            min_new_tokens=tokens if tokens > SHORT_TOKENS else 0,
        )
        valid = content_mask(r.response_ids_BT, r.response_mask_BT, eos)
        forks = peak_entropy_forks(
            r.entropy_BT,
            valid,
            quantile=cfg.fork_quantile,
            min_entropy=cfg.min_fork_entropy,
            max_forks=cfg.chunks_per_response,
            spacing=L,
        )
        n_valid = valid.sum(-1).tolist()
        lengths += sum(n_valid)
        # M chunks of L student tokens' worth per audited chunk; the last chunk may be shorter.
        peak += sum(M * min(L, n - f) for row, n in zip(forks, n_valid, strict=True) for f in row)
        every += sum(M * n for n in n_valid)
        d = make_drafts(
            model,
            r,
            forks,
            num_drafts=cfg.num_drafts,
            chunk_tokens=L,
            temperature=cfg.temperature,
            eos_ids=eos,
            pad_id=tokenizer.pad_token_id,
        )
        _, texts = draft_texts(tokenizer, r, d)
        unanimous_saved += sum(
            M * min(L, n_valid[b_] - f)
            for t, b_, f in zip(texts, d.row_F, d.position_F, strict=True)
            if is_unanimous(t)
        )
    return {
        "response_tokens_mean": lengths / (batches * PROMPTS),
        "peak_tokens_per_step": peak / batches,
        "every_chunk_tokens_per_step": every / batches,
        "ratio": every / max(peak, 1.0),
        "peak_tokens_group_baseline_per_step": (peak - unanimous_saved) / batches,
    }


def split(rows: list[dict]) -> dict[str, float]:
    keys = ("time_rollout_s", "time_drafts_s", "time_wait_s", "time_update_s")
    out = {
        k.removeprefix("time_").removesuffix("_s"): statistics.median(r[k] for r in rows)
        for k in keys
    }
    out["teacher_wall"] = statistics.median(r["time_teacher_s"] for r in rows)
    out["verifier_calls_wall"] = statistics.median(r["time_verifier_s"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and batches")
    parser.add_argument("--world", choices=("trained", "tiny"), default="trained")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: least contention on a shared machine)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 2 if args.quick else 3
    batches = 1 if args.quick else 2
    workdir = Path(tempfile.mkdtemp(prefix="omniopd-bench-trainer-"))
    world, world_kind = toy_world(args.world, workdir)

    audit = {
        "short": audit_tokens(world, SHORT_TOKENS, batches),
        "512": audit_tokens(world, LONG_TOKENS, batches),
    }

    results: dict[str, Any] = {}
    with Backend(delay_s=0.0) as zero, Backend(delay_s=LATENCY_S) as slow:
        teacher = {"provider": "openai", "model": "bench", "max_n": 16, "max_tokens": 512}
        gateway = Gateway(
            {
                "teachers": [
                    {"name": "zero", "base_url": f"{zero.url}/v1", **teacher},
                    {"name": "slow", "base_url": f"{slow.url}/v1", **teacher},
                ]
            },
            workdir,
        )
        verifier = Verifier()
        try:
            for label, tokens, objective in (
                ("short", SHORT_TOKENS, "drafts"),
                ("512", LONG_TOKENS, "drafts"),
                ("short likelihood", SHORT_TOKENS, "likelihood"),
                ("512 likelihood", LONG_TOKENS, "likelihood"),
            ):
                times, rows = latency_arms(
                    world,
                    f"127.0.0.1:{gateway.port}",
                    verifier.url,
                    workdir,
                    tokens,
                    steps,
                    objective,
                )
                t0, t500 = statistics.median(times["0ms"]), statistics.median(times["500ms"])
                forks = statistics.median(r["forks_audited"] for r in rows["500ms"])
                results[label] = {
                    "step_0ms_s": t0,
                    "step_500ms_s": t500,
                    "ratio": t500 / t0,
                    "exposed_latency_s": t500 - t0,
                    "forks_per_step": forks,
                    "serial_per_fork_s": forks * LATENCY_S,
                    "split_0ms": split(rows["0ms"]),
                    "split_500ms": split(rows["500ms"]),
                    "forks_failed": sum(r["forks_failed"] for r in rows["0ms"] + rows["500ms"]),
                }
        finally:
            verifier.stop()
            gateway.stop()

    print(
        f"toy world: {world_kind}; {PROMPTS} prompts/step, up to 4 forks, K=4, M=8, L=16; "
        f"{steps} measured steps per arm, torch threads {torch.get_num_threads()}\n"
    )
    print("1. latency hiding (median step wall time; drafts objective, then likelihood)")
    print(
        f"{'responses':<18}{'0 ms':>9}{'500 ms':>9}{'ratio':>8}{'paid':>8}{'forks':>7}{'1-by-1':>9}"
    )
    for label, r in results.items():
        print(
            f"{label:<18}{r['step_0ms_s']:>8.2f}s{r['step_500ms_s']:>8.2f}s{r['ratio']:>8.2f}"
            f"{r['exposed_latency_s']:>7.2f}s{r['forks_per_step']:>7.0f}{r['serial_per_fork_s']:>8.1f}s"
        )
    print("\n2. audit cost: teacher output tokens per step")
    print(
        f"{'responses':<12}{'length':>8}{'peak':>9}{'every chunk':>13}{'ratio':>8}{'peak, group':>13}"
    )
    for label, a in audit.items():
        print(
            f"{label:<12}{a['response_tokens_mean']:>8.0f}{a['peak_tokens_per_step']:>9.0f}"
            f"{a['every_chunk_tokens_per_step']:>13.0f}{a['ratio']:>7.1f}x"
            f"{a['peak_tokens_group_baseline_per_step']:>13.0f}"
        )
    print("\n3. time split of a step (median seconds; teacher and verifier overlap the update)")
    for label, r in results.items():
        for arm in ("split_0ms", "split_500ms"):
            parts = "  ".join(f"{k} {v:.2f}" for k, v in r[arm].items())
            print(f"{label:<18}{arm.removeprefix('split_'):<7}{parts}")
    summary = {
        "world": world_kind,
        "latency_step_ratio": results["512"]["ratio"],
        "latency_step_ratio_short": results["short"]["ratio"],
        "likelihood_latency_step_ratio": results["512 likelihood"]["ratio"],
        "likelihood_latency_step_ratio_short": results["short likelihood"]["ratio"],
        "exposed_latency_s_512": results["512"]["exposed_latency_s"],
        "exposed_latency_s_short": results["short"]["exposed_latency_s"],
        "step_0ms_s_512": results["512"]["step_0ms_s"],
        "step_0ms_s_short": results["short"]["step_0ms_s"],
        "forks_per_step_512": results["512"]["forks_per_step"],
        "audit_token_ratio_512": audit["512"]["ratio"],
        "audit_token_ratio_short": audit["short"]["ratio"],
        "time_split_512": results["512"]["split_0ms"],
        "time_split_short": results["short"]["split_0ms"],
        "forks_failed": sum(r["forks_failed"] for r in results.values()),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    if not math.isfinite(summary["latency_step_ratio"]):
        sys.exit("latency ratio is not finite")


if __name__ == "__main__":
    main()
