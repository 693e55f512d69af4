"""One step of the published objective (``--objective likelihood``), as docs/method.md's steps.

    1. rollout      the student answers each prompt, keeping H_t and log π        (rollout.py)
    2. anchors      up to M chunks of C tokens per response, at entropy peaks     (anchors.py)
    3. speculation  each chunk is the student's own sample: its text and π̄_c     (drafts.py)
    4. teacher      N continuations of x ⊕ y[:a] per chunk, one stream            (teacher.py)
    5. agreement    k_c = Σ_n φ(y_c, t_n) from the verifier, then π̂_c            (scores.py)
    6. update       −Σ π̂_c log π_θ(chunk) + β·Σ KL(π_ref ‖ π_θ) on unaudited tokens, / B

This project's two extensions, off by default (docs/method.md): ``--outcome-weight`` adds the
answer checker's reward on every response token to step 6's weights; ``--mixed-weight`` adds an
off-policy term on each chunk's consensus teacher continuation (:func:`consensus_batch`).

Steps 4 and 5 run on the I/O thread while step 6 does what needs no teacher: the forward pass
of the responses through the student and the reference, and the KL term's backward. When the
verifier's counts arrive only the chunk term's backward is left.

Memory: step 6's forward pass (token_terms.py) keeps no batch × length × vocabulary tensor.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import torch

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.anchors import audited_mask, peak_entropy_anchors, random_anchors
from omniopd.trainer.baselines import checked_rewards
from omniopd.trainer.context import Run
from omniopd.trainer.data import Example
from omniopd.trainer.drafts import Drafts, draft_texts, make_drafts
from omniopd.trainer.loop import sample_responses, teacher_requests, wait_for_scores
from omniopd.trainer.losses import (
    chunk_likelihood_loss,
    chunk_prior_mean,
    consensus_index,
    likelihood_target,
    outcome_weights,
    shaped_offpolicy_loss,
    unaudited_kl_loss,
)
from omniopd.trainer.metrics import LikelihoodMetrics, response_metrics
from omniopd.trainer.models import (
    Batch,
    left_pad,
    right_pad,
)
from omniopd.trainer.retry import Counters
from omniopd.trainer.rollout import Rollout
from omniopd.trainer.scores import ForkScores, ScoreSettings, service_metrics
from omniopd.trainer.token_terms import token_terms
from omniopd.trainer.update import micro_batches, optimizer_step

log = logging.getLogger("omniopd.trainer")

TINY = torch.finfo(torch.float32).tiny  # π̄ is sent as a prior mean in (0, 1]
MIXED_GAMMA = 0.1  # LUFFY's γ in the shaping p / (p + γ) of off-policy targets


@dataclass
class Audits:
    """Steps 2 and 3: the chunks of a step, one draft each (the student's own sample).

    chunks: a :class:`Drafts` with K = 1 whose fork i is chunk i (row-major); prior_mean_C: π̄
    per chunk; audited_BT: tokens some chunk covers.
    """

    chunks: Drafts
    prior_mean_C: torch.Tensor
    audited_BT: torch.Tensor

    @property
    def num_chunks(self) -> int:
        return self.chunks.num_forks


def choose_anchors(run: Run, r: Rollout) -> list[list[int]]:
    """Step 2: peak-entropy anchors, or (control arm) as many at random positions."""
    cfg = run.config
    M, C = cfg.chunks_per_response, cfg.chunk_tokens
    anchors = peak_entropy_anchors(r.entropy_BT, r.response_mask_BT, max_chunks=M, chunk_tokens=C)
    if cfg.fork_strategy == "random":
        anchors = random_anchors(
            [len(a) for a in anchors], r.response_lengths(), chunk_tokens=C, rng=run.fork_rng
        )
    return anchors


def speculate(run: Run, r: Rollout, anchors: list[list[int]]) -> Audits:
    """Step 3: each chunk's tokens and π̄ from the rollout itself (no new sampling)."""
    cfg = run.config
    chunks = make_drafts(
        run.model,
        r,
        anchors,
        num_drafts=1,
        chunk_tokens=cfg.chunk_tokens,
        temperature=cfg.temperature,
        eos_ids=run.eos_ids,
        pad_id=run.pad_id,
    )
    prior_mean_C = chunk_prior_mean(chunks.logprobs_FKL[:, 0]).clamp(min=TINY)
    audited_BT = audited_mask(anchors, tuple(r.response_ids_BT.shape), cfg.chunk_tokens)
    return Audits(chunks, prior_mean_C.cpu(), audited_BT.to(r.response_ids_BT.device))


def chunk_weights(
    audits: Audits, target: dict[int, float], shape: tuple[int, int], chunk_tokens: int
) -> torch.Tensor:
    """(B, T) π̂ of the scored chunk covering each token; 0 elsewhere (unscored chunks too)."""
    weight_BT = torch.zeros(shape)
    for i, value in target.items():
        b, a = audits.chunks.row_F[i], audits.chunks.position_F[i]
        weight_BT[b, a : a + chunk_tokens] = value
    return weight_BT


def consensus_batch(
    run: Run, r: Rollout, audits: Audits, scores: ForkScores, scored: list[int]
) -> Batch | None:
    """``--mixed-weight``: for each scored chunk, the teacher continuation that agrees most
    with the others (:func:`consensus_index` over the N x N rows after the chunk's own), in the
    student's tokens (at most C), after the prompt and the response up to the chunk. None when
    no chunk has one."""
    prefixes, targets = [], []
    C = run.config.chunk_tokens
    for i in scored:
        texts, rows = scores.continuations.get(i, []), scores.similarity[i][1:]
        if not texts or len(rows) != len(texts):
            continue
        text = texts[consensus_index(rows)]
        ids = run.tokenizer(text, add_special_tokens=False)["input_ids"][:C]
        if not ids:
            continue
        b, a = audits.chunks.row_F[i], audits.chunks.position_F[i]
        prompt = r.prompt_ids_BP[b][r.prompt_mask_BP[b].bool()].tolist()
        prefixes.append(prompt + r.response_ids_BT[b, :a].tolist())
        targets.append(ids)
    if not targets:
        return None
    prefix_ids, prefix_mask = left_pad(prefixes, run.pad_id)
    tokens, mask = right_pad(targets, run.pad_id)
    device = run.device
    return Batch(prefix_ids.to(device), prefix_mask.to(device), tokens.to(device), mask.to(device))


# -- the step ------------------------------------------------------------------------------


def likelihood_step(run: Run, examples: list[Example]) -> LikelihoodMetrics:
    """One step of the published objective on this rank's prompts; the step's local metrics."""
    cfg = run.config
    prompts = [e.prompt for e in examples]
    t0 = time.perf_counter()

    # 1. Rollout: a response per prompt, with H_t and log π.
    r = sample_responses(run, prompts)
    time_rollout = time.perf_counter() - t0
    # 2. Anchors at entropy peaks; 3. each chunk is the student's own sample.
    audits = speculate(run, r, choose_anchors(run, r))
    partials, texts = draft_texts(run.tokenizer, r, audits.chunks)
    time_drafts = time.perf_counter() - t0 - time_rollout

    # 4 + 5. Teacher continuations and agreement counts, in the background.
    counters = Counters()
    chunk_ids = list(range(audits.num_chunks))
    future = None
    if chunk_ids:
        assert run.services is not None
        future = run.services.teacher_and_scores(
            teacher_requests(run, prompts, audits.chunks, partials, texts, chunk_ids),
            {i: texts[i] for i in chunk_ids},
            temperature=cfg.teacher_temperature,
            score_settings=ScoreSettings(cfg.metric, "likelihood", cfg.alpha, "prob"),
            counters=counters,
            prior_means={i: [float(audits.prior_mean_C[i])] for i in chunk_ids},
            teacher_rows=cfg.mixed_weight > 0,
        )

    # 6. Update, starting while the teacher answers.
    answers = [e.answer or "" for e in examples]
    scores, update = likelihood_update(run, r, audits, answers, future)

    for err in counters.teacher_errors[:3] + counters.verifier_errors[:3]:
        log.warning("chunk failed: %s", err)
    response_tokens = float(r.response_mask_BT.sum())
    entropy = r.entropy_BT.tolist()
    anchor_entropy = [
        entropy[b][a] for b, a in zip(audits.chunks.row_F, audits.chunks.position_F, strict=True)
    ]
    return replace(
        update,
        **response_metrics(r.response_ids_BT, r.response_mask_BT, r.entropy_BT, r.truncated_B),
        **service_metrics(scores, counters),
        forks=audits.num_chunks,
        forks_audited=audits.num_chunks,
        forks_failed=len(scores.failed),
        chunks_per_response=audits.num_chunks / max(1, len(prompts)),
        audited_fraction=float(audits.audited_BT.sum()) / max(1.0, response_tokens),
        entropy_at_forks=sum(anchor_entropy) / len(anchor_entropy) if anchor_entropy else None,
        time_rollout_s=time_rollout,
        time_drafts_s=time_drafts,
    )


def likelihood_update(
    run: Run,
    r: Rollout,
    audits: Audits,
    answers: list[str],
    future: Future[ForkScores] | None,
) -> tuple[ForkScores, LikelihoodMetrics]:
    """Step 6: −Σ_c π̂_c log π_θ(chunk c) + β·Σ KL(π_ref ‖ π_θ) over unaudited tokens, both
    summed over the step's B responses (all ranks) and divided by B, then an optimizer step;
    with the extensions, the outcome weights (``answers``: each response's reference answer)
    and the consensus continuations' off-policy term.

    Without accumulation the forward pass and the KL's backward run while ``future`` (steps 4
    and 5) is still out; the graph of the log-probabilities is kept for the chunk term. (A
    sharded model takes the other path: one backward per forward.) Returns the scores that
    arrived and the update's part of the step's metrics.
    """
    cfg = run.config
    t_update = time.perf_counter()
    responses = r.as_batch()
    unaudited_BT = responses.mask_BT.bool() & ~audits.audited_BT
    num_responses, num_unaudited = dist_utils.sum_floats(
        [float(len(responses)), float(unaudited_BT.sum())], run.device
    )
    ref = run.ref if cfg.beta > 0 else None
    kl_metrics: dict[str, float] = {}

    def kl_term(kl_BT: torch.Tensor, unaudited: torch.Tensor) -> torch.Tensor:
        loss, m = unaudited_kl_loss(
            kl_BT,
            unaudited,
            beta=cfg.beta,
            num_responses=num_responses,
            num_unaudited=num_unaudited,
        )
        for key, value in m.items():
            kl_metrics[key] = kl_metrics.get(key, 0.0) + value
        return loss

    early = cfg.grad_accum_steps == 1 and not fsdp.is_sharded(run.model)
    logprobs_BT = None
    if early:
        logprobs_BT, kl_BT = token_terms(run.model, ref, responses, temperature=cfg.temperature)
        if ref is not None:
            kl_term(kl_BT, unaudited_BT).backward(retain_graph=True)
    scores, time_wait = wait_for_scores(run, future)

    # π̂ per scored chunk: k = Σ_n φ over the continuations the teacher returned (N of them),
    # and the student's own π̄.
    scored = [i for i in range(audits.num_chunks) if i in scores.similarity]
    phi = [scores.similarity[i][0] for i in scored]  # the one draft's row
    k_C = torch.tensor([sum(row) for row in phi], dtype=torch.float32)
    n_C = torch.tensor([len(row) for row in phi], dtype=torch.float32)
    prior_C = audits.prior_mean_C[scored] if scored else torch.zeros(0)
    target_C = likelihood_target(k_C, prior_C, num_samples=n_C, alpha=cfg.alpha)
    weight_BT = chunk_weights(
        audits,
        dict(zip(scored, target_C.tolist(), strict=True)),
        tuple(responses.tokens_BT.shape),
        cfg.chunk_tokens,
    ).to(run.device)
    reward_mean = None
    if cfg.outcome_weight > 0:  # this project's extension: the whole response's outcome
        rewards_B = checked_rewards(run, r, answers)
        (reward_sum,) = dist_utils.sum_floats([float(rewards_B.sum())], run.device)
        reward_mean = reward_sum / num_responses
        weight_BT = weight_BT + outcome_weights(
            rewards_B, reward_mean, responses.mask_BT, weight=cfg.outcome_weight
        )
    chunk_metrics: dict[str, float] = {"chunk_loss": 0.0}
    if early:
        assert logprobs_BT is not None
        loss, chunk_metrics = chunk_likelihood_loss(
            logprobs_BT, weight_BT, num_responses=num_responses
        )
        # Without a chunk or outcome weight the KL's backward has already given every gradient.
        if scored or ref is None or cfg.outcome_weight > 0:
            loss.backward()
    else:
        for rows in micro_batches(len(responses), cfg.grad_accum_steps):
            mb = responses.select(rows)
            logp_BT, kl_BT = token_terms(run.model, ref, mb, temperature=cfg.temperature)
            loss, m = chunk_likelihood_loss(logp_BT, weight_BT[rows], num_responses=num_responses)
            if ref is not None:
                loss = loss + kl_term(kl_BT, unaudited_BT[rows])
            loss.backward()
            chunk_metrics["chunk_loss"] += m["chunk_loss"]
    mixed_metrics: dict[str, Any] = {}
    if cfg.mixed_weight > 0:  # this project's extension: the teachers' consensus, off-policy
        consensus = consensus_batch(run, r, audits, scores, scored)
        if consensus is not None:
            logp_BT, _ = token_terms(run.model, None, consensus, temperature=cfg.temperature)
            loss, mixed_metrics = shaped_offpolicy_loss(
                logp_BT,
                consensus.mask_BT,
                gamma=MIXED_GAMMA,
                weight=cfg.mixed_weight,
                num_responses=num_responses,
            )
            loss.backward()
    grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)
    return scores, LikelihoodMetrics(
        loss=chunk_metrics["chunk_loss"]
        + kl_metrics.get("kl_loss", 0.0)
        + mixed_metrics.get("mixed_loss", 0.0),
        chunk_loss=chunk_metrics["chunk_loss"],
        kl=kl_metrics.get("kl"),
        kl_loss=kl_metrics.get("kl_loss"),
        forks_scored=len(scored),
        k_mean=float(k_C.mean()) if scored else None,
        prior_mean=float(prior_C.mean()) if scored else None,
        target_mean=float(target_C.mean()) if scored else None,
        target_min=float(target_C.min()) if scored else None,
        target_max=float(target_C.max()) if scored else None,
        reward_mean=reward_mean,
        mixed_loss=mixed_metrics.get("mixed_loss"),
        mixed_tokens=mixed_metrics.get("mixed_tokens"),
        mixed_prob=mixed_metrics.get("mixed_prob"),
        time_wait_s=time_wait,
        time_update_s=time.perf_counter() - t_update - time_wait,
        grad_norm=grad_norm,
    )
