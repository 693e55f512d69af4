"""Answers in GSM8K's format (worked steps, then ``#### value``) and the rows that hold them.

A dataset, the toy worlds' or a user's, is a JSONL file of ``{"prompt", "answer"}`` rows; a
response is right when the value after its last ``####`` equals the reference's. This is the
bottom layer: the trainer, the evaluation and the toy worlds all check answers here.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

ANSWER_MARK = "####"
MATH_VERIFY_TIMEOUT_S = 5
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


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
