"""What a toy world is made of: data sizes, tokenizers and one spec per model, hashed.

The hash names the cache folder, so any change here (or to :data:`RECIPE_VERSION`, bumped when
the code that builds the world changes what it builds) gives a new world.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# Bump when task.py, chain.py, text.py or train.py change what a recipe produces.
RECIPE_VERSION = "1"
TOKENIZERS = ("bpe", "char")
WORLDS = ("arith", "chain")


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-style decoder and how long to train it (``steps=0``: random weights).

    ``steps`` sets the learning-rate schedule and the most steps run; with ``stop_at`` set,
    training stops at the first check (every ``check_every`` steps from ``check_from`` on)
    where greedy accuracy on the val split reaches ``stop_at``. The eval split is never used
    for this, so the accuracies measured on it afterwards are unbiased.
    """

    hidden: int
    layers: int
    heads: int
    intermediate: int
    tokenizer: str  # "bpe" or "char"
    steps: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    stop_at: float | None = None
    check_every: int = 100
    check_from: int = 0
    # Each batch runs as this many length-sorted micro-batches, each padded only to its own
    # longest row (the same gradient, less padding; omniopd.toy.train.backward_batch).
    micro_batches: int = 1

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        for name in (
            "hidden", "layers", "heads", "intermediate", "batch_size", "check_every",
            "micro_batches",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup", "check_from"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.stop_at is not None and not 0.0 <= self.stop_at <= 1.0:
            raise ValueError(f"stop_at must be in [0, 1], got {self.stop_at}")
        if self.micro_batches > self.batch_size:
            raise ValueError(
                f"micro_batches ({self.micro_batches}) must be <= batch_size ({self.batch_size})"
            )


@dataclass(frozen=True)
class Recipe:
    world: str = "arith"  # the task: "arith" (omniopd.toy.task) or "chain" (omniopd.toy.chain)
    data_seed: int = 1234
    n_train: int = 60_000
    n_val: int = 500
    n_eval: int = 500
    bpe_vocab_size: int = 320
    max_length: int = 96  # the models' context (max_position_embeddings)
    # Measured on this task: accuracy is all or nothing per problem, so it jumps (a 96-wide,
    # 3-layer model goes from ~20% to ~80% between steps 600 and 1,000 of 64 rows). Each model
    # therefore trains until its greedy accuracy on the val split reaches a target.
    teacher: ModelSpec = field(
        default_factory=lambda: ModelSpec(
            hidden=96, layers=3, heads=4, intermediate=384, tokenizer="bpe", steps=2000,
            lr=2e-3, seed=1, stop_at=0.93, check_every=100, check_from=1000,
        )
    )  # fmt: skip
    teacher_char: ModelSpec = field(
        default_factory=lambda: ModelSpec(
            hidden=96, layers=3, heads=4, intermediate=384, tokenizer="char", steps=2000,
            lr=2e-3, seed=2, stop_at=0.93, check_every=100, check_from=1000,
        )
    )  # fmt: skip
    # A third the size and stopped inside its own jump: right on some problems, with habits of
    # its own on the rest (not an early checkpoint of the teacher's run).
    student: ModelSpec = field(
        default_factory=lambda: ModelSpec(
            hidden=64, layers=2, heads=4, intermediate=256, tokenizer="bpe", steps=2000,
            lr=3e-3, seed=3, stop_at=0.28, check_every=25, check_from=600,
        )
    )  # fmt: skip
    version: str = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")

    def to_dict(self) -> dict:
        """The recipe as JSON; ``world`` only when it is not ``arith`` and a model's
        ``micro_batches`` only when it is not 1, so that the recipes written before either
        existed keep their hash (and their cached worlds)."""
        out = asdict(self)
        if out["world"] == "arith":
            del out["world"]
        for spec in out.values():  # the models' specs, as dicts
            if isinstance(spec, dict) and spec["micro_batches"] == 1:
                del spec["micro_batches"]
        return out

    def hash(self) -> str:
        """12 hex digits of the SHA-256 of the recipe's canonical JSON."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


TINY = Recipe(
    n_train=512,
    n_val=64,
    n_eval=64,
    teacher=ModelSpec(hidden=64, layers=2, heads=4, intermediate=128, tokenizer="bpe", seed=1),
    teacher_char=ModelSpec(
        hidden=64, layers=2, heads=4, intermediate=128, tokenizer="char", seed=2
    ),
    student=ModelSpec(hidden=32, layers=1, heads=4, intermediate=64, tokenizer="bpe", seed=3),
)


# The chain world (omniopd.toy.chain): answers of 60-120 tokens, so longer sequences; sized so
# that it builds from nothing in about 15 minutes on 2 CPU cores (docs/toy.md has the figures).
# Every model runs its batch as 4 length-sorted micro-batches: the same gradient, less padding.
CHAIN = Recipe(
    world="chain",
    n_val=200,
    max_length=320,
    teacher=ModelSpec(
        hidden=96, layers=3, heads=4, intermediate=384, tokenizer="bpe", steps=1750,
        batch_size=32, lr=2e-3, seed=1, stop_at=0.85, check_every=250, check_from=750,
        micro_batches=4,
    ),
    # teacher-char planned for 2,250 steps, stopping at the first check at 0.85 or more: with
    # 1,750 steps two builds of the same recipe ended at 0.858 and at 0.774 on eval (val 0.795
    # at step 1,750), the second below the band (docs/toy.md).
    teacher_char=ModelSpec(
        hidden=96, layers=3, heads=4, intermediate=384, tokenizer="char", steps=2250,
        batch_size=32, lr=2e-3, seed=2, stop_at=0.85, check_every=250, check_from=750,
        micro_batches=4,
    ),
    # Five sixths of the teacher's width, 70 % of its parameters, a separate model (seed 3).
    # Its val accuracy jumps (0.115, 0.18, 0.38 at steps 1,100-1,300 in a probe stopping at
    # 0.25: eval 0.358, near the band's top), so it stops at the first check at or above 0.15
    # (step 1,200 in that probe; built with it: eval 0.196, docs/toy.md).
    student=ModelSpec(
        hidden=80, layers=3, heads=4, intermediate=320, tokenizer="bpe", steps=1750,
        batch_size=32, lr=3e-3, seed=3, stop_at=0.15, check_every=100, check_from=800,
        micro_batches=4,
    ),
)  # fmt: skip

TINY_CHAIN = Recipe(
    world="chain",
    n_train=512,
    n_val=64,
    n_eval=64,
    max_length=320,
    teacher=TINY.teacher,
    teacher_char=TINY.teacher_char,
    student=TINY.student,
)

RECIPES = {"arith": Recipe(), "chain": CHAIN}
TINY_RECIPES = {"arith": TINY, "chain": TINY_CHAIN}

# What a built world must measure (greedy accuracy on its eval split), per model: (low, high).
# The builder refuses to save a world outside them (omniopd.toy.build.check_bands).
BANDS: dict[str, dict[str, tuple[float, float]]] = {
    "arith": {"teacher": (0.85, 1.0), "teacher_char": (0.85, 1.0), "student": (0.15, 0.50)},
    "chain": {"teacher": (0.80, 1.0), "teacher_char": (0.80, 1.0), "student": (0.10, 0.40)},
}
# Longest answer the world's evaluations generate, in tokens of the longest tokenizer (char).
EVAL_MAX_NEW_TOKENS = {"arith": 48, "chain": 192}
