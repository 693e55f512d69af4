"""The run: set up from a config, loop over steps, evaluate, checkpoint, resume, stop cleanly.

The step functions (``loop.omniopd_step``, ``likelihood.likelihood_step`` and the baselines)
know nothing of files, signals or processes; this module is the only one that does. Each returns
its method's metrics dataclass (``metrics.py``), combined over ranks by ``merge_ranks``.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers.utils import logging as transformers_logging

from omniopd.retry import RetryPolicy
from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.baselines import (
    AnswerCache,
    check_same_tokenizer,
    grpo_step,
    opd_step,
    sft_step,
)
from omniopd.trainer.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from omniopd.trainer.config import TrainConfig, save_config, to_yaml
from omniopd.trainer.context import Run
from omniopd.trainer.data import Example, batch_indices, load_examples, split_heldout
from omniopd.trainer.evaluate import evaluate
from omniopd.trainer.likelihood import likelihood_step
from omniopd.trainer.loop import omniopd_step
from omniopd.trainer.metrics import MetricsWriter, StepMetrics, merge_ranks
from omniopd.trainer.models import (
    DTYPES,
    autocast,
    checkpoint_layers,
    eos_token_ids,
    freeze,
    load_model,
    load_tokenizer,
    resolve_device,
)
from omniopd.trainer.services import Services
from omniopd.trainer.teacher import CharsPerToken
from omniopd.trainer.update import make_scheduler

log = logging.getLogger("omniopd.trainer")

STEPS: dict[str, Callable[[Run, list[Example]], StepMetrics]] = {
    "omniopd": omniopd_step,
    "opd": opd_step,
    "sft": sft_step,
    "grpo": grpo_step,
}


class StopRequest:
    """SIGTERM/SIGINT: finish the step in flight, checkpoint, exit. A second one: exit now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.requested = True
        log.warning("%s: checkpointing after this step, then stopping", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns a run's resources; ``fit()`` trains to ``config.steps`` and returns the summary."""

    def __init__(self, config: TrainConfig) -> None:
        self.writer: MetricsWriter | None = None
        transformers_logging.disable_progress_bar()  # our own bar is the one to watch
        try:
            self._setup(config)
        except BaseException:
            self.close()  # a failed start leaves no thread, channel or process group behind
            raise

    def _setup(self, config: TrainConfig) -> None:
        self.config = cfg = config
        self.device = dist_utils.init_from_env(resolve_device(cfg.device), always=cfg.fsdp)
        self.output_dir = Path(cfg.output_dir)
        self.is_main = dist_utils.is_main()
        if self.is_main:
            save_config(cfg, self.output_dir)
            log.info("config (saved to %s):\n%s", self.output_dir / "config.yaml", to_yaml(cfg))
        seed_everything(cfg.seed * 1000 + dist_utils.rank())

        need_answer = cfg.method == "grpo" or cfg.outcome_weight > 0 or cfg.eval_every > 0
        rows = load_examples(
            cfg.dataset,
            cfg.dataset_split,
            cfg.prompt_field,
            cfg.answer_field,
            need_answer=need_answer,
        )
        if cfg.eval_dataset:
            self.train_rows = rows
            self.heldout = load_examples(
                cfg.eval_dataset, "test", cfg.prompt_field, cfg.answer_field, need_answer=True
            )
        else:
            self.train_rows, self.heldout = split_heldout(
                rows, cfg.eval_size if cfg.eval_every else 0
            )

        checkpoint = latest_checkpoint(self.output_dir) if cfg.resume else None
        if cfg.resume and checkpoint is None:
            log.info("--resume: no checkpoint in %s yet, starting from step 0", self.output_dir)
        dtype = DTYPES[cfg.dtype]
        self.autocast = lambda: autocast(self.device, dtype)
        weights = str(checkpoint / "model") if checkpoint else cfg.student
        tokenizer = load_tokenizer(cfg.student)
        model = self.load(weights, torch.float32)  # master weights, see autocast
        if cfg.gradient_checkpointing:
            log.info("gradient checkpointing of %d decoder layers", checkpoint_layers(model))
        if not cfg.fsdp:
            dist_utils.broadcast_parameters(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(
            optimizer, cfg.lr_schedule, cfg.warmup_steps, cfg.steps * cfg.ppo_epochs
        )
        self.run = Run(
            config=cfg,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            device=self.device,
            eos_ids=eos_token_ids(model, tokenizer),
            pad_id=tokenizer.pad_token_id,
            fork_rng=random.Random(cfg.seed * 1000 + dist_utils.rank()),
            teacher_chars_per_token=CharsPerToken(cfg.teacher_chars_per_token),
        )
        if cfg.beta > 0 and cfg.method != "sft":
            self.run.ref = self.load(cfg.ref or cfg.student, dtype, frozen=True)
        if cfg.method == "opd":
            assert cfg.opd_teacher is not None
            check_same_tokenizer(
                tokenizer, load_tokenizer(cfg.opd_teacher), cfg.student, cfg.opd_teacher
            )
            self.run.white_box_teacher = self.load(cfg.opd_teacher, dtype, frozen=True)
        if cfg.method in ("omniopd", "sft"):
            self.run.services = Services(
                gateway=cfg.gateway,
                verifier=cfg.verifier if cfg.method == "omniopd" else None,
                teacher=cfg.teacher,
                policy=RetryPolicy(cfg.max_retries, cfg.retry_backoff_s),
                timeout_s=cfg.request_timeout_s,
            )
            if cfg.method == "omniopd":
                self.run.services.check(teacher_samples=cfg.teacher_samples)
            else:  # SFT asks for its answers per prompt in one request
                self.run.services.check(teacher_samples=cfg.sft_answers, flag="--sft-answers")
        if cfg.method == "sft":
            self.run.extras["sft_cache"] = AnswerCache(
                self.output_dir / f"sft_answers.rank{dist_utils.rank()}.jsonl",
                cfg.teacher or "",
                per_prompt=cfg.sft_answers,
            )

        self.state = TrainState()
        if checkpoint is not None:
            self.state = load_trainer_state(
                checkpoint,
                optimizer=optimizer,
                scheduler=scheduler,
                fork_rng=self.run.fork_rng,
                model=model,
                chars_per_token=self.run.teacher_chars_per_token,
            )
            log.info("resumed from %s (step %d)", checkpoint, self.state.step)
        self.writer = (
            MetricsWriter(self.output_dir, resume_step=self.state.step) if self.is_main else None
        )

    def load(self, path: str, dtype: torch.dtype, *, frozen: bool = False) -> torch.nn.Module:
        """``from_pretrained(path)`` onto this rank's device; with ``--fsdp``, onto the CPU and
        then sharded across the ranks, each keeping its shard on its device."""
        if not self.config.fsdp:
            model = load_model(path, self.device, dtype)
            return freeze(model) if frozen else model
        model = load_model(path, torch.device("cpu"), dtype)
        return fsdp.shard(freeze(model) if frozen else model, self.device)

    # ------------------------------------------------------------------------------------

    def next_examples(self) -> list[Example]:
        cfg = self.config
        idx = batch_indices(
            self.state.data_position,
            num_rows=len(self.train_rows),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            rank=dist_utils.rank(),
            world_size=dist_utils.world_size(),
        )
        return [self.train_rows[i] for i in idx]

    def save(self) -> Path:
        path = save_checkpoint(
            self.output_dir,
            model=self.run.model,
            tokenizer=self.run.tokenizer,
            optimizer=self.run.optimizer,
            scheduler=self.run.scheduler,
            state=self.state,
            fork_rng=self.run.fork_rng,
            chars_per_token=self.run.teacher_chars_per_token,
            config_yaml=to_yaml(self.config),
            keep=self.config.keep_checkpoints,
        )
        if self.is_main:
            log.info("checkpoint: %s", path)
        return path

    def evaluate(self) -> dict[str, Any]:
        """Held-out evaluation on rank 0 (the others wait), with ``omniopd-eval``'s code.

        A sharded model's forward needs every rank: with ``--fsdp`` all ranks evaluate the
        same prompts together, and rank 0 reports."""
        result: dict[str, Any] = {}
        if self.heldout and (self.is_main or self.config.fsdp):
            with self.autocast():
                result = evaluate(self.run, self.heldout)
        if self.is_main and result:
            log.info("eval at step %d: %s", self.state.step, json.dumps(result))
        dist_utils.barrier()
        return result if self.is_main else {}

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        step_fn = STEPS[cfg.method]
        if cfg.method == "omniopd" and cfg.objective == "likelihood":
            step_fn = likelihood_step
        stop = StopRequest()
        bar = tqdm(
            total=cfg.steps, initial=self.state.step, disable=not self.is_main, desc=cfg.method
        )
        start, rows, evals = time.perf_counter(), [], []
        stopped = False
        try:
            while self.state.step < cfg.steps:
                t0 = time.perf_counter()
                self.run.step = self.state.step + 1
                with self.autocast():
                    local = step_fn(self.run, self.next_examples())
                self.state.step += 1
                self.state.data_position += 1
                metrics = merge_ranks(dist_utils.gather_objects(local))
                metrics |= {
                    "step": self.state.step,
                    "lr": self.run.scheduler.get_last_lr()[0],
                    "time_step_s": time.perf_counter() - t0,
                }
                last = self.state.step == cfg.steps
                if cfg.eval_every and (self.state.step % cfg.eval_every == 0 or last):
                    result = self.evaluate()
                    metrics |= {f"eval_{k}": v for k, v in result.items()}
                    evals.append({"step": self.state.step, **result})
                if self.writer is not None:
                    rows.append(self.writer.write(metrics))
                    bar.set_postfix(_postfix(metrics), refresh=False)
                bar.update(1)
                stopped = dist_utils.any_true(stop.requested, self.device)
                due = cfg.save_every and self.state.step % cfg.save_every == 0
                if due or last or stopped:
                    self.save()
                if stopped:
                    break
        finally:
            stop.restore()
            bar.close()
        summary = self.summary(rows, evals, time.perf_counter() - start, stopped)
        return summary

    def summary(
        self, rows: list[dict[str, Any]], evals: list[dict[str, Any]], wall_s: float, stopped: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.config.method,
            "steps": self.state.step,
            "stopped_by_signal": stopped,
            "wall_s": round(wall_s, 2),
            "output_dir": str(self.output_dir),
        }
        for key in ("loss", "reward_mean", "kl", "forks", "forks_failed", "teacher_tokens"):
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                out[f"{key}_first"], out[f"{key}_last"] = values[0], values[-1]
        if evals:
            out["eval"] = evals[-1]
        if self.is_main:
            (self.output_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
            log.info("summary: %s", json.dumps(out))
        return out

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        run: Run | None = getattr(self, "run", None)  # absent when the start failed early
        if run is not None and run.services is not None:
            run.services.close()
            run.services = None
        dist_utils.shutdown()


def _postfix(m: dict[str, Any]) -> dict[str, str]:
    keys = ("loss", "reward_mean", "kl", "forks", "forks_failed")
    return {k: f"{m[k]:.4g}" for k in keys if isinstance(m.get(k), int | float)}


def train(config: TrainConfig) -> dict[str, Any]:
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()
