"""One step of the drafts objective (``--objective drafts``), as docs/method.md's six steps.

    1. rollout      the student answers each prompt, keeping H_t          (rollout.py)
    2. forks        peak-entropy positions to audit                       (forks.py)
    3. drafts       K chunks per fork: its own + K-1 fresh               (drafts.py)
    4. teacher      M teacher chunks per fork, one stream for the step    (teacher.py)
    5. scores       verifier rewards, batched as teacher replies arrive   (scores.py)
    6. update       policy gradient on drafts + β·KL anchor  (drafts_update; losses.py, update.py)

Steps 4 and 5 run on the I/O thread, all forks at once; meanwhile step 6 already does what
needs no teacher (the KL anchor's forward and backward, the drafts' forward), so a slow
teacher is paid about once per step, and partly hidden behind that work.

With ``--fsdp`` the ranks run their forward and backward passes in lockstep (fsdp.py says how);
the steps read the same.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import replace

import torch

from omniopd.trainer import distributed as dist_utils
from omniopd.trainer import fsdp
from omniopd.trainer.context import Run
from omniopd.trainer.data import Example
from omniopd.trainer.drafts import Drafts, draft_texts, is_unanimous, make_drafts
from omniopd.trainer.forks import content_mask, peak_entropy_forks, random_forks
from omniopd.trainer.losses import centred_advantages, policy_gradient_loss
from omniopd.trainer.metrics import DraftsMetrics, response_metrics
from omniopd.trainer.models import continuation_logits, encode_prompts, token_logprobs
from omniopd.trainer.retry import Counters
from omniopd.trainer.rollout import Rollout, rollout
from omniopd.trainer.scores import ForkScores, ScoreSettings, service_metrics
from omniopd.trainer.teacher import TeacherRequest, request_seed, teacher_max_tokens
from omniopd.trainer.update import (
    kl_anchor,
    later_epochs,
    optimizer_step,
    policy_gradient_backward,
)

log = logging.getLogger("omniopd.trainer")


def sample_responses(run: Run, prompts: list[str]) -> Rollout:
    """Step 1 for a list of prompt texts."""
    cfg = run.config
    return rollout(
        run.model,
        encode_prompts(run.tokenizer, prompts),
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        eos_ids=run.eos_ids,
        pad_id=run.pad_id,
        min_new_tokens=cfg.min_new_tokens,
    )


def choose_forks(run: Run, r: Rollout) -> list[list[int]]:
    """Step 2: peak-entropy forks, or (control arm) as many at random positions."""
    cfg = run.config
    valid_BT = content_mask(r.response_ids_BT, r.response_mask_BT, run.eos_ids)
    forks = peak_entropy_forks(
        r.entropy_BT,
        valid_BT,
        quantile=cfg.fork_quantile,
        min_entropy=cfg.min_fork_entropy,
        max_forks=cfg.chunks_per_response,
        spacing=cfg.chunk_tokens,
    )
    if cfg.fork_strategy == "random":
        forks = random_forks(
            [len(f) for f in forks], valid_BT, spacing=cfg.chunk_tokens, rng=run.fork_rng
        )
    return forks


def teacher_requests(
    run: Run,
    prompts: list[str],
    d: Drafts,
    partials: list[str],
    texts: list[list[str]],
    forks: list[int],
) -> list[TeacherRequest]:
    """Step 4's requests: teacher chunks sized to cover about as much text as a draft.

    The student's characters per token are measured on this step's drafts, the teacher's on
    its earlier replies (a configured guess until the first arrive). Each request carries a
    sampling seed derived from the run's seed, the step and the fork (``request_seed``), so a
    resumed run asks the teacher exactly what the uninterrupted one would have.
    """
    cfg, services = run.config, run.services
    assert services is not None
    draft_chars = sum(len(t) for group in texts for t in group)
    draft_tokens = max(1, int(d.mask_FKL.sum()))
    max_tokens = teacher_max_tokens(
        cfg.chunk_tokens,
        draft_chars / draft_tokens,
        run.teacher_chars_per_token.value,
        services.teacher_max_tokens,
    )
    return [
        TeacherRequest(
            fork=i,
            prompt=prompts[d.row_F[i]],
            partial_answer=partials[i],
            n=cfg.teacher_samples,
            max_tokens=max_tokens,
            seed=request_seed(cfg.seed, run.step, i, dist_utils.rank()),
        )
        for i in forks
    ]


def wait_for_scores(run: Run, future: Future[ForkScores] | None) -> tuple[ForkScores, float]:
    """Steps 4 and 5's result (empty when nothing was sent) and the seconds step 6 waited for
    it; the teacher's characters per token are updated from its replies."""
    t_wait = time.perf_counter()
    scores = future.result() if future is not None else ForkScores()
    run.teacher_chars_per_token.update(scores.teacher_chars, scores.teacher_tokens)
    return scores, time.perf_counter() - t_wait


def fork_advantages(run: Run, rewards_GK: torch.Tensor) -> torch.Tensor:
    """Advantages of the scored forks; ``batch`` centres over the drafts of every rank."""
    cfg = run.config
    population = None
    if cfg.baseline == "batch":
        total, squares, count = dist_utils.sum_floats(
            [float(rewards_GK.sum()), float((rewards_GK**2).sum()), float(rewards_GK.numel())],
            run.device,
        )
        mean = total / max(count, 1.0)
        population = (mean, max(squares / max(count, 1.0) - mean**2, 0.0) ** 0.5)
    return centred_advantages(
        rewards_GK, cfg.baseline, normalize=cfg.normalize_advantages, population=population
    )


def omniopd_step(run: Run, examples: list[Example]) -> DraftsMetrics:
    """One step of the method on this rank's prompts; returns the step's local metrics."""
    cfg = run.config
    prompts = [e.prompt for e in examples]
    t0 = time.perf_counter()

    # 1. Rollout: a response per prompt, with per-token entropy H_t.
    r = sample_responses(run, prompts)
    time_rollout = time.perf_counter() - t0
    # 2. Peak-entropy scheduler: where the student was unsure.
    forks = choose_forks(run, r)
    # 3. Drafts: the rollout's own chunk plus K-1 fresh ones per fork, from one prefill.
    d = make_drafts(
        run.model,
        r,
        forks,
        num_drafts=cfg.num_drafts,
        chunk_tokens=cfg.chunk_tokens,
        temperature=cfg.temperature,
        eos_ids=run.eos_ids,
        pad_id=run.pad_id,
    )
    partials, texts = draft_texts(run.tokenizer, r, d)
    unanimous = {i for i, t in enumerate(texts) if is_unanimous(t)}
    # The group baseline learns nothing from a fork whose K drafts agree: skip its teacher call.
    audited = [i for i in range(d.num_forks) if cfg.baseline == "batch" or i not in unanimous]
    time_drafts = time.perf_counter() - t0 - time_rollout

    # 4 + 5. Teacher samples and verifier scores, in the background, as replies arrive.
    counters = Counters()
    future = None
    if audited:
        assert run.services is not None
        future = run.services.teacher_and_scores(
            teacher_requests(run, prompts, d, partials, texts, audited),
            {i: texts[i] for i in audited},
            temperature=cfg.teacher_temperature,
            score_settings=ScoreSettings(cfg.metric, cfg.prior, cfg.alpha, cfg.reward),
            counters=counters,
        )

    # 6. Update, starting while the teacher answers.
    scores, update = drafts_update(run, r, d, audited, future)

    fork_entropy = [float(r.entropy_BT[b, f]) for b, f in zip(d.row_F, d.position_F, strict=True)]
    for err in counters.teacher_errors[:3] + counters.verifier_errors[:3]:
        log.warning("fork failed: %s", err)
    return replace(
        update,
        **response_metrics(r.response_ids_BT, r.response_mask_BT, r.entropy_BT, r.truncated_B),
        **service_metrics(scores, counters),
        forks=d.num_forks,
        forks_audited=len(audited),
        forks_failed=len(scores.failed),
        forks_unanimous=len(unanimous),
        entropy_at_forks=sum(fork_entropy) / len(fork_entropy) if fork_entropy else None,
        time_rollout_s=time_rollout,
        time_drafts_s=time_drafts,
    )


def drafts_update(
    run: Run,
    r: Rollout,
    d: Drafts,
    audited: list[int],
    future: Future[ForkScores] | None,
) -> tuple[ForkScores, DraftsMetrics]:
    """Step 6: the KL anchor on every response token, the policy gradient on the K drafts of
    every fork the verifier scored, an optimizer step, then ``--ppo-epochs`` - 1 more epochs.

    What needs no teacher runs first, while ``future`` (steps 4 and 5) is still out: the KL
    anchor's forward and backward, then the drafts' forward pass. Returns the scores that
    arrived and the update's part of the step's metrics.
    """
    cfg = run.config
    t_update = time.perf_counter()
    responses = r.as_batch()
    (num_tokens,) = dist_utils.sum_floats([float(responses.mask_BT.sum())], run.device)
    metrics: dict[str, float] = dict(kl_anchor(run, responses, num_tokens))
    # Keeping the drafts' graph until the scores arrive costs one batch of activations, so it is
    # done only without accumulation (grad_accum_steps = 1); otherwise the forward waits.
    # (--fsdp: every rank forwards when any does, one without forks a placeholder.)
    early_logprobs_NT = None
    if cfg.grad_accum_steps == 1 and fsdp.any_rank(run.model, bool(audited)):
        early = d.as_batch(audited) if audited else fsdp.placeholder_batch(run.device)
        early_logprobs_NT = token_logprobs(
            continuation_logits(run.model, early, cfg.temperature), early.tokens_BT
        )
    scores, time_wait = wait_for_scores(run, future)

    # ... then the policy gradient on the drafts of every fork the verifier scored. Every rank
    # backpropagates when any fork of the step was scored (a rank with none, a zero loss).
    used = [i for i in audited if i in scores.rewards]
    rewards_GK = torch.tensor([scores.rewards[i] for i in used], dtype=torch.float32)
    rewards_GK = rewards_GK.reshape(len(used), cfg.num_drafts)
    advantages_GK = fork_advantages(run, rewards_GK)
    (forks_scored,) = dist_utils.sum_floats([float(len(used))], run.device)
    drafts_batch = d.as_batch(used)
    old_logprobs = None
    if forks_scored == 0:
        log.warning("step: no fork was scored (all failed or none audited): KL term only")
    elif early_logprobs_NT is not None:
        K, scored = cfg.num_drafts, set(used)
        rows = [j * K + k for j, i in enumerate(audited) if i in scored for k in range(K)]
        index = torch.tensor(rows, dtype=torch.long, device=early_logprobs_NT.device)
        logprobs_NT = early_logprobs_NT[index]
        loss, pg = policy_gradient_loss(
            logprobs_NT,
            drafts_batch.mask_BT,
            advantages_GK.flatten().to(logprobs_NT.device),
            normalizer=forks_scored,
            clip=cfg.clip,
        )
        loss.backward()
        metrics |= pg
        old_logprobs = [logprobs_NT.detach()]
    else:
        pg, old_logprobs = policy_gradient_backward(
            run.model,
            drafts_batch,
            advantages_GK.flatten(),
            normalizer=forks_scored,
            temperature=cfg.temperature,
            parts=cfg.grad_accum_steps,
            clip=cfg.clip,
        )
        metrics |= pg
    del early_logprobs_NT  # frees the graph of forks that were not scored
    grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, cfg.max_grad_norm)

    # More epochs on the same samples: PPO's clipped ratio against the first epoch's log-probs.
    clip_fraction = later_epochs(
        run,
        responses,
        drafts_batch,
        advantages_GK.flatten(),
        normalizer=forks_scored,
        old_logprobs=old_logprobs,
        num_tokens=num_tokens,
    )
    return scores, DraftsMetrics(
        loss=metrics.get("kl_loss", 0.0) + metrics.get("pg_loss", 0.0),
        pg_loss=metrics.get("pg_loss", 0.0),
        kl=metrics.get("kl"),
        clip_fraction=clip_fraction if clip_fraction is not None else metrics.get("clip_fraction"),
        reward_mean=float(rewards_GK.mean()) if used else None,
        advantage_std=float(advantages_GK.std(unbiased=False)) if used else None,
        forks_scored=len(used),
        time_wait_s=time_wait,
        time_update_s=time.perf_counter() - t_update - time_wait,
        grad_norm=grad_norm,
    )
