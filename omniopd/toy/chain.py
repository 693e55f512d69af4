"""The ``chain`` toy task: 4 to 6 operations applied in turn, every step written out.

A problem is ``Q: Start at 347; 1) add 58; 2) subtract 90; 3) add 17; 4) subtract 25. Result?``
and its answer writes one numbered sentence per operation, the operation then its arithmetic,
and ends as GSM8K's answers do::

    1) Add 58: 347+58=405. 2) Subtract 90: 405-90=315. 3) Add 17: 315+17=332. ... #### 307

The numbers are what make it learnable by the world's small models: without them the teacher
mostly copied the wrong operand from the prompt (83 of 89 first mistakes on 100 problems, the
arithmetic itself being right); with them the step's number in the answer finds its operation
in the prompt (val accuracy 0.355 against 0.015 after 750 steps of the same teacher).

The running value starts at a three-digit number and stays in ``0..MAX_VALUE``; additions and
subtractions take a two-digit operand, a product a one-digit factor and is offered only while
the value has two digits (the ``arith`` world's product). Answers run to 73-124 tokens of the
world's tokenizer, so a response holds several audit chunks, a mistake can happen mid-way and
every later step inherits it.

Splits are disjoint by construction: problems are drawn from one seeded generator, duplicates
(by prompt) skipped, and the list of distinct problems cut into eval, val and train.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from omniopd.toy.task import ANSWER_MARK, Splits

START_RANGE = range(100, 1000)
OPERAND_RANGE = range(10, 100)
FACTOR_RANGE = range(2, 10)
STEPS_RANGE = range(4, 7)
MAX_VALUE = 999
WORDS = {"+": ("add", "Add"), "-": ("subtract", "Subtract"), "*": ("multiply by", "Multiply by")}


@dataclass(frozen=True)
class ChainProblem:
    """A start value and the operations applied to it in turn: ``(("+", 58), ("*", 3), ...)``."""

    start: int
    ops: tuple[tuple[str, int], ...]

    def values(self) -> list[int]:
        """The running value after each operation."""
        out, value = [], self.start
        for op, x in self.ops:
            value = value + x if op == "+" else value - x if op == "-" else value * x
            out.append(value)
        return out

    @property
    def value(self) -> int:
        return self.values()[-1]

    @property
    def prompt(self) -> str:
        steps = "; ".join(f"{i}) {WORDS[op][0]} {x}" for i, (op, x) in enumerate(self.ops, 1))
        return f"Q: Start at {self.start}; {steps}. Result?"

    @property
    def answer(self) -> str:
        sentences, before = [], self.start
        for i, ((op, x), after) in enumerate(zip(self.ops, self.values(), strict=True), 1):
            sentences.append(f"{i}) {WORDS[op][1]} {x}: {before}{op}{x}={after}.")
            before = after
        return " ".join(sentences) + f" {ANSWER_MARK} {self.value}"

    def row(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer}


def sample_problem(rng: random.Random) -> ChainProblem:
    """One problem: a start, then 4-6 operations each drawn among those that keep the value in
    ``0..MAX_VALUE`` (a product only on a two-digit value)."""
    start = value = rng.choice(START_RANGE)
    ops: list[tuple[str, int]] = []
    for _ in range(rng.choice(STEPS_RANGE)):
        allowed = []
        if value + OPERAND_RANGE.start <= MAX_VALUE:
            allowed.append("+")
        if value >= OPERAND_RANGE.start:
            allowed.append("-")
        if 10 <= value < 100:
            allowed.append("*")
        op = rng.choice(allowed)
        if op == "+":
            x = rng.randint(OPERAND_RANGE.start, min(OPERAND_RANGE[-1], MAX_VALUE - value))
            value += x
        elif op == "-":
            x = rng.randint(OPERAND_RANGE.start, min(OPERAND_RANGE[-1], value))
            value -= x
        else:
            x = rng.choice(FACTOR_RANGE)
            value *= x
        ops.append((op, x))
    return ChainProblem(start, tuple(ops))


def make_chain_splits(seed: int, n_train: int, n_val: int, n_eval: int) -> Splits:
    """Disjoint splits of distinct problems drawn from one generator seeded with ``seed``.

    The eval split is the first ``n_eval`` distinct problems, so it depends only on ``seed``
    and ``n_eval``: growing the training set never changes which problems are held out.
    """
    if min(n_train, n_val, n_eval) < 0:
        raise ValueError(f"split sizes must be >= 0, got {n_train=}, {n_val=}, {n_eval=}")
    rng = random.Random(seed)
    seen: set[str] = set()
    picked: list[ChainProblem] = []
    total = n_train + n_val + n_eval
    while len(picked) < total:
        problem = sample_problem(rng)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            picked.append(problem)
    return Splits(
        eval=picked[:n_eval], val=picked[n_eval : n_eval + n_val], train=picked[n_eval + n_val :]
    )
