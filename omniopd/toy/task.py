"""The toy reasoning task: two-step arithmetic with worked steps and a final ``#### value`` line.

A problem is ``Q: 37+48*2=?`` and its answer ``48*2=96. 37+96=133. #### 133``: one product of a
two-digit number by a one-digit number, then a sum, in the format of GSM8K's answers (worked
steps, then ``####`` and the value). Everything here is pure Python and deterministic in its seed.

Splits are disjoint by construction: every possible problem is enumerated once, shuffled with the
seed, and the shuffled list is cut into eval, val and train, so no prompt can appear in two splits.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

ANSWER_MARK = "####"
OPERAND_RANGE = range(10, 100)  # the two-digit operands a and b
FACTOR_RANGE = range(2, 10)  # the one-digit factor c
FORMS = ("a+b*c", "b*c+a")  # where the product sits in the prompt
MATH_VERIFY_TIMEOUT_S = 5
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


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


def extract_answer(text: str) -> str | None:
    """The value after the last ``####`` (up to the end of that line), or None if there is none."""
    at = text.rfind(ANSWER_MARK)
    if at < 0:
        return None
    value = text[at + len(ANSWER_MARK) :].split("\n", 1)[0].strip()
    return value or None


def _as_number(text: str) -> Decimal | None:
    if not PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def check_answer(response: str, reference: str) -> bool:
    """Whether ``response``'s final answer equals ``reference``'s.

    ``reference`` is a full worked answer (its value is read after ``####``) or a bare value.
    Plain numbers are compared exactly (``133`` equals ``133.0``, never ``134``); anything else
    (fractions, LaTeX, expressions) goes to math-verify (Hugging Face's ``math_verify``).
    """
    got = extract_answer(response)
    want = extract_answer(reference) if ANSWER_MARK in reference else reference.strip()
    if got is None or not want:
        return False
    got_num, want_num = _as_number(got), _as_number(want)
    if got_num is not None and want_num is not None:
        return got_num == want_num
    if got == want:
        return True
    return _math_verify(got, want)


def _math_verify(got: str, want: str) -> bool:
    from math_verify import parse, verify

    # math-verify's time limit is a SIGALRM, which only the main thread may set.
    limit = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    # Inline maths delimiters make math-verify read the whole value as LaTeX (bare, it extracts
    # only the number at the start of ``1+x``).
    gold = parse(_as_latex(want), parsing_timeout=limit)
    pred = parse(_as_latex(got), parsing_timeout=limit)
    return bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=limit))


def _as_latex(value: str) -> str:
    return value if "$" in value else f"${value}$"


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a JSONL file with ``prompt`` and ``answer``; a bad line names its number."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for field in ("prompt", "answer"):
                if not isinstance(row.get(field), str):
                    raise ValueError(f"{path}:{lineno}: field {field!r} must be a string")
            yield row
