"""The baselines OmniOPD is compared with, on the same data, logging and checkpoints.

``opd``  standard white-box on-policy distillation: per-token reverse KL(π_θ ‖ π_T) to a local
         teacher on the student's own samples (exact over the shared vocabulary, or k3).
``sft``  cross-entropy on full teacher answers fetched through the gateway, cached on disk.
``grpo`` self-exploratory RL: G samples per prompt, reward from the answer checker, advantages
         normalised within each prompt's group (GRPO, DeepSeekMath), the same KL anchor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer.context import Run
from omniopd.trainer.data import Example
from omniopd.trainer.loop import sample_responses
from omniopd.trainer.losses import centred_advantages
from omniopd.trainer.metrics import GRPOMetrics, OPDMetrics, SFTMetrics, response_metrics
from omniopd.trainer.models import Batch, encode_prompts, left_pad, right_pad
from omniopd.trainer.retry import Counters
from omniopd.trainer.rollout import Rollout
from omniopd.trainer.update import (
    cross_entropy_backward,
    kl_anchor,
    kl_anchor_backward,
    later_epochs,
    optimizer_step,
    policy_gradient_backward,
)

log = logging.getLogger("omniopd.trainer")


class TokenizerMismatch(SystemExit):
    """``--method opd`` needs one vocabulary; the message names both models."""


def check_same_tokenizer(
    student: PreTrainedTokenizerBase,
    teacher: PreTrainedTokenizerBase,
    student_path: str,
    teacher_path: str,
) -> None:
    """White-box OPD compares distributions token by token: the vocabularies must be equal."""
    if student.get_vocab() != teacher.get_vocab():
        raise TokenizerMismatch(
            f"--method opd needs the student and the teacher to share a tokenizer, but student"
            f" {student_path!r} ({len(student)} tokens) and opd_teacher {teacher_path!r}"
            f" ({len(teacher)} tokens) differ; use --method omniopd for a teacher with another"
            " tokenizer"
        )


def opd_step(run: Run, examples: list[Example]) -> OPDMetrics:
    """Rollout, then reverse KL to the white-box teacher on every response token."""
    cfg = run.config
    assert run.white_box_teacher is not None
    t0 = time.perf_counter()
    r = sample_responses(run, [e.prompt for e in examples])
    time_rollout = time.perf_counter() - t0
    t1 = time.perf_counter()
    batch = r.as_batch()
    (num_tokens,) = dist_utils.sum_floats([float(batch.mask_BT.sum())], run.device)
    num_tokens = max(num_tokens, 1.0)
    metrics = kl_anchor_backward(
        run.model,
        run.white_box_teacher,
        batch,
        beta=1.0,
        estimator=cfg.kl_estimator,
        temperature=cfg.temperature,
        num_tokens=num_tokens,
        parts=cfg.grad_accum_steps,
        target_is_ref=False,
    )
    metrics |= kl_anchor(run, batch, num_tokens)
    grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)
    return OPDMetrics(
        **response_metrics(r.response_ids_BT, r.response_mask_BT, r.entropy_BT, r.truncated_B),
        loss=metrics["opd_loss"] + metrics.get("kl_loss", 0.0),
        opd_kl=metrics["opd_kl"],
        kl=metrics.get("kl"),
        time_rollout_s=time_rollout,
        time_update_s=time.perf_counter() - t1,
        grad_norm=grad_norm,
    )


class AnswerCache:
    """Teacher answers for SFT, one JSON line per prompt in ``output_dir``; survives resumes.

    A prompt has ``per_prompt`` answers (``--sft-answers``); one with fewer is fetched again.
    Lines written with one answer (``"answer"``) read as a list of one.
    """

    def __init__(self, path: Path, teacher: str, per_prompt: int = 1) -> None:
        self.path, self.teacher, self.per_prompt = path, teacher, per_prompt
        self.answers: dict[str, list[str]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                self.answers[row["key"]] = row["answers"] if "answers" in row else [row["answer"]]

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.teacher}\0{prompt}".encode()).hexdigest()

    def get(self, prompt: str) -> list[str] | None:
        """The prompt's answers, or None until it has ``per_prompt`` of them."""
        answers = self.answers.get(self.key(prompt))
        return answers[: self.per_prompt] if answers and len(answers) >= self.per_prompt else None

    def put(self, prompt: str, answers: list[str]) -> None:
        key = self.key(prompt)
        self.answers[key] = list(answers)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "answers": list(answers)}) + "\n")


def sft_step(run: Run, examples: list[Example]) -> SFTMetrics:
    """Cross-entropy on the teacher's full answers (``--sft-answers`` per prompt, fetched once
    per prompt in one request, then cached)."""
    cfg, services = run.config, run.services
    assert services is not None
    cache: AnswerCache = run.extras["sft_cache"]
    prompts = [e.prompt for e in examples]
    missing = sorted({p for p in prompts if cache.get(p) is None})
    counters = Counters()
    t0 = time.perf_counter()
    teacher_tokens = failed = 0
    if missing:
        replies = services.io.run(
            services.sample_answers(
                missing,
                n=cfg.sft_answers,
                max_tokens=min(cfg.max_new_tokens, services.teacher_max_tokens),
                temperature=cfg.teacher_temperature,
                counters=counters,
            )
        )
        for prompt, reply in zip(missing, replies, strict=True):
            if reply.ok and len(reply.chunks) >= cfg.sft_answers:
                cache.put(prompt, reply.chunks[: cfg.sft_answers])
                teacher_tokens += reply.output_tokens
            else:
                failed += 1
                log.warning("teacher answer failed: %s", reply.error)
    time_teacher = time.perf_counter() - t0

    t1 = time.perf_counter()
    pairs = [(p, a) for p in prompts for a in cache.get(p) or []]
    kept = [p for p, _ in pairs]
    eos = run.tokenizer.eos_token_id
    targets = []
    for _, answer in pairs:
        ids = list(run.tokenizer(answer, add_special_tokens=False)["input_ids"])
        targets.append([*ids[: cfg.max_new_tokens - 1], eos] if eos is not None else ids)
    prefix_ids, prefix_mask = left_pad(encode_prompts(run.tokenizer, kept), run.pad_id)
    tokens, mask = right_pad(targets, run.pad_id)
    batch = Batch(
        prefix_ids.to(run.device),
        prefix_mask.to(run.device),
        tokens.to(run.device),
        mask.to(run.device),
    )
    (num_tokens,) = dist_utils.sum_floats([float(mask.sum())], run.device)
    # A rank with no answer runs no pass (under --fsdp, passes that add nothing).
    metrics = cross_entropy_backward(
        run.model,
        batch,
        temperature=1.0,
        num_tokens=max(num_tokens, 1.0),
        parts=cfg.grad_accum_steps,
    )
    grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)
    return SFTMetrics(
        loss=metrics.get("sft_loss", 0.0),
        sft_loss=metrics.get("sft_loss"),
        answers_failed=failed,
        answers_cached=len(prompts) - len(missing),
        teacher_tokens=teacher_tokens,
        teacher_retries=counters.teacher_retries,
        time_teacher_s=time_teacher,
        time_update_s=time.perf_counter() - t1,
        grad_norm=grad_norm,
    )


def answer_checker() -> Callable[[str, str], float]:
    """The toy task's checker: reward 1 for a correct final answer, else 0."""
    from omniopd.answers import check_answer

    return lambda response, answer: float(check_answer(response, answer))


def checked_rewards(run: Run, r: Rollout, answers: list[str]) -> torch.Tensor:
    """(B,) the answer checker's 0/1 reward of each response against its reference answer."""
    check = run.extras.setdefault("check_answer", answer_checker())
    ids, mask = r.response_ids_BT.cpu(), r.response_mask_BT.cpu()
    texts = run.tokenizer.batch_decode(
        [t[m].tolist() for t, m in zip(ids, mask, strict=True)], skip_special_tokens=True
    )
    return torch.tensor([check(text, a) for text, a in zip(texts, answers, strict=True)])


def grpo_step(run: Run, examples: list[Example]) -> GRPOMetrics:
    """G samples per prompt, checker rewards, group-normalised advantages, KL anchor."""
    cfg = run.config
    G = cfg.grpo_samples
    t0 = time.perf_counter()
    r = sample_responses(run, [e.prompt for e in examples for _ in range(G)])
    answers = [e.answer or "" for e in examples for _ in range(G)]
    rewards_BG = checked_rewards(run, r, answers).view(len(examples), G)
    advantages_BG = centred_advantages(rewards_BG, "group", normalize=True)
    time_rollout = time.perf_counter() - t0

    t1 = time.perf_counter()
    batch = r.as_batch()
    num_tokens, num_samples = dist_utils.sum_floats(
        [float(batch.mask_BT.sum()), float(len(batch))], run.device
    )
    metrics = kl_anchor(run, batch, max(num_tokens, 1.0))
    pg, old = policy_gradient_backward(
        run.model,
        batch,
        advantages_BG.flatten(),
        normalizer=num_samples,
        temperature=cfg.temperature,
        parts=cfg.grad_accum_steps,
        clip=cfg.clip,
    )
    metrics |= pg
    grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)
    clip_fraction = later_epochs(
        run,
        batch,
        batch,
        advantages_BG.flatten(),
        normalizer=num_samples,
        old_logprobs=old,
        num_tokens=num_tokens,
    )
    return GRPOMetrics(
        **response_metrics(r.response_ids_BT, r.response_mask_BT, r.entropy_BT, r.truncated_B),
        loss=metrics.get("kl_loss", 0.0) + metrics["pg_loss"],
        pg_loss=metrics["pg_loss"],
        kl=metrics.get("kl"),
        clip_fraction=clip_fraction if clip_fraction is not None else metrics.get("clip_fraction"),
        reward_mean=float(rewards_BG.mean()),
        advantage_std=float(advantages_BG.std(unbiased=False)),
        time_rollout_s=time_rollout,
        time_update_s=time.perf_counter() - t1,
        grad_norm=grad_norm,
    )
