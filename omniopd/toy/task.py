"""The toy reasoning task: two-step arithmetic with worked steps and a final ``#### value`` line.

A problem is ``Q: 37+48*2=?`` and its answer ``48*2=96. 37+96=133. #### 133``: one product of a
two-digit number by a one-digit number, then a sum, in the format of GSM8K's answers (worked
steps, then ``####`` and the value). Everything here is pure Python and deterministic in its seed.

Splits are disjoint by construction: every possible problem is enumerated once, shuffled with the
seed, and the shuffled list is cut into eval, val and train, so no prompt can appear in two splits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Answer checking and the rows' files belong to every dataset, not to this one: they live in
# omniopd/answers.py, and are imported here for the toy world's modules and its users.
from omniopd.answers import ANSWER_MARK, check_answer, extract_answer, read_jsonl, write_jsonl

__all__ = [
    "ANSWER_MARK",
    "Problem",
    "Splits",
    "all_problems",
    "check_answer",
    "extract_answer",
    "make_splits",
    "read_jsonl",
    "write_jsonl",
]

OPERAND_RANGE = range(10, 100)  # the two-digit operands a and b
FACTOR_RANGE = range(2, 10)  # the one-digit factor c
FORMS = ("a+b*c", "b*c+a")  # where the product sits in the prompt


@dataclass(frozen=True)
class Problem:
    """One problem: ``a + b*c`` written in one of :data:`FORMS`."""

    a: int
    b: int
    c: int
    form: str

    @property
    def value(self) -> int:
        return self.a + self.b * self.c

    @property
    def prompt(self) -> str:
        expr = (
            f"{self.a}+{self.b}*{self.c}" if self.form == "a+b*c" else f"{self.b}*{self.c}+{self.a}"
        )
        return f"Q: {expr}=?"

    @property
    def answer(self) -> str:
        """The full worked answer: the product, the sum, then ``#### value``."""
        product = self.b * self.c
        total = f"{self.a}+{product}" if self.form == "a+b*c" else f"{product}+{self.a}"
        return f"{self.b}*{self.c}={product}. {total}={self.value}. {ANSWER_MARK} {self.value}"

    def row(self) -> dict[str, str]:
        """The JSONL row: ``{"prompt", "answer"}``, the format the trainer takes for user data."""
        return {"prompt": self.prompt, "answer": self.answer}


def all_problems() -> list[Problem]:
    """Every problem of the task, in a fixed order (129,600 of them)."""
    return [
        Problem(a, b, c, form)
        for form in FORMS
        for a in OPERAND_RANGE
        for b in OPERAND_RANGE
        for c in FACTOR_RANGE
    ]


@dataclass(frozen=True)
class Splits:
    train: list[Problem]
    val: list[Problem]
    eval: list[Problem]


def make_splits(seed: int, n_train: int, n_val: int, n_eval: int) -> Splits:
    """Disjoint splits drawn from one seeded shuffle of :func:`all_problems`.

    The eval split depends only on ``seed`` and ``n_eval``, so growing the training set never
    changes which problems are held out.
    """
    pool = all_problems()
    total = n_train + n_val + n_eval
    if min(n_train, n_val, n_eval) < 0:
        raise ValueError(f"split sizes must be >= 0, got {n_train=}, {n_val=}, {n_eval=}")
    if total > len(pool):
        raise ValueError(f"n_train + n_val + n_eval = {total} exceeds the {len(pool)} problems")
    order = random.Random(seed).sample(range(len(pool)), total)
    picked = [pool[i] for i in order]
    return Splits(
        eval=picked[:n_eval],
        val=picked[n_eval : n_eval + n_val],
        train=picked[n_eval + n_val :],
    )
