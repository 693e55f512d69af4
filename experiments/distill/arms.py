"""The arms of the experiment, and the budget every arm gets alike."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

# One thread per process, before torch loads: on a small shared CPU the trainer, gateway and
# verifier lose far less to contention than OpenMP threads spinning on busy cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

log = logging.getLogger("omniopd.experiments.toy_distill")

TEACHER, TEACHER_CHAR = "toy", "toy-char"
TEACHER_MAX_N = 16  # continuations (or SFT answers) per request the gateway serves
# The answer-length limit of each world's runs and evaluations, in student tokens.
ANSWER_TOKENS = {"arith": 40, "chain": 128}
RESULT = "result.json"
EVAL_BATCH = 64  # the trainer's eval_batch_size default: evaluations here decode alike
# Updates per run, the same for every arm. `--estimate` on the project's 2-core machine while
# three other jobs shared it (load average 10.7) gave, for 65 runs of 90 updates: 157 min of
# wall time at that load, 58 min with the CPU to itself (the CPU its runs used, trainer and
# services together, with no overlap). With the CPU to itself 150 updates (the quick
# check) would take about 91 min; 100 take about 64, which leaves room for the estimate's
# error and for some other load (at a load average of 8, an earlier estimate gave 93 min).
DEFAULT_STEPS = 100


# -- the arms -------------------------------------------------------------------------------

# The OmniOPD arm named, before the chain world's first run, as the one to judge the goals by
# (docs/results.md): the published objective plus the teacher's consensus text, off-policy.
NAMED_ARM = "omniopd-mixed"


@dataclass(frozen=True)
class Arm:
    name: str
    method: str | None  # None: the initial student, not trained
    what: str
    teacher: str | None = None  # the gateway teacher it reads (omniopd, sft)
    flags: tuple[str, ...] = ()  # what makes the arm itself
    ablation: bool = False
    # SFT sized to another arm's teacher tokens: ``--sft-answers`` answers per prompt, k the
    # ratio of that arm's teacher tokens to plain SFT's (both at their chosen rate, first seed)
    matches: str | None = None


# OmniOPD's knobs that the ablations change, pinned for every OmniOPD arm: a change of the
# trainer's defaults cannot silently turn an ablation into a copy of the base arm.
OMNIOPD_BASE = (
    *("--objective", "drafts", "--prior", "student", "--metric", "embedding"),
    *("--fork-strategy", "peak", "--alpha", "2", "--reward", "prob", "--baseline", "group"),
)
# The published objective, sized for the arith world's ~27-token answers: 2 chunks of 8 tokens
# per response (about 60% of an answer audited), 8 teacher samples each; α and β as published.
# The paper's C = 50 would not fit in one toy answer. The chunks follow the world
# (CHUNKS_BY_WORLD, applied when a run's flags are written).
LIKELIHOOD_BASE = (
    *("--objective", "likelihood", "--metric", "edit", "--fork-strategy", "peak"),
    *("--chunk-tokens", "8", "--chunks-per-response", "2", "--teacher-samples", "8"),
    *("--alpha", "1", "--beta", "0.1"),
)


# The published objective's chunks per world: 2 of 8 tokens in the arith world's ~27-token
# answers, 4 of 16 in the chain world's 73-124 (about the same share audited, 60 %).
CHUNKS_BY_WORLD = {
    "arith": {"--chunk-tokens": "8", "--chunks-per-response": "2"},
    "chain": {"--chunk-tokens": "16", "--chunks-per-response": "4"},
}


def sized_for(world: str, flags: tuple[str, ...]) -> list[str]:
    """An arm's flags with the published objective's chunk sizes of ``world``."""
    out = list(flags)
    if "likelihood" in out:
        for flag, value in CHUNKS_BY_WORLD[world].items():
            out[out.index(flag) + 1] = value
    return out


def _ablation(
    name: str, what: str, flag: str, value: str, base: tuple[str, ...] = OMNIOPD_BASE
) -> Arm:
    flags = list(base)
    flags[flags.index(flag) + 1] = value
    return Arm(name, "omniopd", what, TEACHER, tuple(flags), ablation=True)


ARMS: tuple[Arm, ...] = (
    Arm("student", None, "the initial student, not trained"),
    Arm("sft", "sft", "cross-entropy on the teacher's full answers (read through the gateway)",
        TEACHER),
    Arm("sft-matched", "sft", "SFT given as many teacher tokens as the named arm "
        f"(`{NAMED_ARM}`): k teacher answers per prompt", TEACHER, matches=NAMED_ARM),
    Arm("grpo", "grpo", "self-exploratory RL: GRPO on the answer checker's 0/1 reward"),
    Arm("opd", "opd", "white-box OPD: per-token reverse KL to the same-tokenizer teacher"),
    Arm("omniopd", "omniopd", "OmniOPD, the same teacher used as a black box (text only)",
        TEACHER, OMNIOPD_BASE),
    Arm("omniopd-char", "omniopd", "OmniOPD with teacher-char (another tokenizer; OPD cannot)",
        TEACHER_CHAR, OMNIOPD_BASE),
    _ablation("omniopd-uniform-prior", "prior mean 0.5 instead of the student's", "--prior",
              "uniform"),
    _ablation("omniopd-lexical", "character n-gram F-score instead of embeddings", "--metric",
              "lexical"),
    _ablation("omniopd-hybrid", "mean of the embedding and lexical scores", "--metric", "hybrid"),
    _ablation("omniopd-random-forks", "forks at random positions (as many as at peaks)",
              "--fork-strategy", "random"),
    _ablation("omniopd-alpha0.5", "prior strength α = 0.5", "--alpha", "0.5"),
    _ablation("omniopd-alpha8", "prior strength α = 8", "--alpha", "8"),
    _ablation("omniopd-logratio", "reward log p_T − log p_S instead of p_T", "--reward",
              "logratio"),
    _ablation("omniopd-batch-baseline", "advantages centred over the step, not per fork",
              "--baseline", "batch"),
    Arm("omniopd-likelihood", "omniopd", "the published objective: π̂-weighted likelihood of "
        "the student's own chunks, edit similarity", TEACHER, LIKELIHOOD_BASE, ablation=True),
    _ablation("omniopd-likelihood-rouge1", "the published objective with ROUGE-1 F1",
              "--metric", "rouge1", LIKELIHOOD_BASE),
    _ablation("omniopd-likelihood-embedding", "the published objective with embedding cosine",
              "--metric", "embedding", LIKELIHOOD_BASE),
    Arm("omniopd-outcome", "omniopd", "this project's extension (after KDRL): the published "
        "objective plus the answer checker's reward on the whole response, λ = 1", TEACHER,
        (*LIKELIHOOD_BASE, "--outcome-weight", "1"), ablation=True),
    Arm("omniopd-mixed", "omniopd", "this project's extension (after LUFFY): the published "
        "objective plus each chunk's consensus teacher continuation, off-policy, μ = 1", TEACHER,
        (*LIKELIHOOD_BASE, "--mixed-weight", "1"), ablation=True),
)  # fmt: skip
ARM_NAMES = tuple(a.name for a in ARMS)
# The trainer's default objective is drafts, so `omniopd` is also the drafts arm.
ALIASES = {"omniopd-drafts": "omniopd"}
# The arms run by default: the baselines, both objectives, the published objective's three
# agreements, its two extensions, teacher-char and random audits. The other ablations of the
# drafts design run when named (--arms NAME ..., or --arms all).
DEFAULT_ARMS = (
    "student", "sft", "sft-matched", "grpo", "opd", "omniopd", "omniopd-char",
    "omniopd-random-forks", "omniopd-likelihood", "omniopd-likelihood-rouge1",
    "omniopd-likelihood-embedding", "omniopd-outcome", "omniopd-mixed",
)  # fmt: skip
MAIN_ARMS = ("student", "sft", "sft-matched", "grpo", "opd", "omniopd", NAMED_ARM, "omniopd-char")

# Set by the experiment itself: the same for every arm (budget options) or per run.
MANAGED_FLAGS = {
    "--method", "--student", "--dataset", "--eval-dataset", "--eval-size", "--gateway",
    "--teacher", "--verifier", "--opd-teacher", "--output-dir", "--steps", "--batch-size",
    "--lr", "--seed", "--eval-every", "--save-every", "--keep-checkpoints", "--resume",
    "--no-resume", "--max-new-tokens", "--device", "--config", "--lr-schedule", "--sft-answers",
}  # fmt: skip


# -- the budget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What every arm gets alike."""

    steps: int
    batch_size: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    evals: int  # held-out evaluations per run, evenly spaced, the last at the last step
    max_new_tokens: int
    device: str
    extra: tuple[str, ...]  # flags after --, for every training run
    lr_schedule: str = "linear"

    @property
    def eval_every(self) -> int:
        return max(1, math.ceil(self.steps / self.evals))

    @property
    def save_every(self) -> int:
        return self.eval_every  # a killed run redoes at most one evaluation interval


def split_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """``--name value`` pairs (``value`` None for a boolean flag such as ``--no-resume``)."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        name = tokens[i]
        if not name.startswith("--"):
            raise SystemExit(f"trainer flags after --: expected --name, got {name!r}")
        if "=" in name:
            key, value = name.split("=", 1)
            pairs.append((key, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            pairs.append((name, tokens[i + 1]))
            i += 2
        else:
            pairs.append((name, None))
            i += 1
    return pairs


def check_extra(extra: list[str]) -> tuple[str, ...]:
    arm_flags = {f for arm in ARMS for f in arm.flags if f.startswith("--")}
    for name, _ in split_flags(extra):
        if name in MANAGED_FLAGS:
            raise SystemExit(
                f"{name} after --: set by the experiment itself (see --help for its own option)"
            )
        if name in arm_flags:
            raise SystemExit(
                f"{name} after --: it is what some arms differ in, so it cannot be set for all"
            )
    return tuple(extra)
