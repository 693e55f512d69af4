"""The stand-ins' "model": a deterministic toy text generator with a known right answer.

Every conversation has one reference answer, a fixed sequence of words derived from a key
(the first line of the first user message for chat, the whole prompt for raw completions).
Asked to continue a prefix of that answer, the generator returns exactly the rest of it, so a
test can check that a provider produced a true continuation: ``partial + text == answer``.
Tokens are words with their leading whitespace (``" bravo"``); above temperature zero, samples
differ from the reference at random positions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_WORD_LIST = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu one two three "
    "four five six seven eight nine zero plus minus times equals so then thus hence because "
    "sum carry digit number answer result check total first next last value left right step"
)
WORDS = tuple(_WORD_LIST.split(" "))
ANSWER_WORDS = 48
_TOKEN = re.compile(r"\s*\S+")


def _bytes(*parts: object) -> Iterator[int]:
    """An endless deterministic byte stream seeded by ``parts``."""
    seed = "\x1f".join(map(str, parts)).encode()
    block = 0
    while True:
        yield from hashlib.sha256(seed + block.to_bytes(8, "little")).digest()
        block += 1


def _words(count: int, *parts: object) -> list[str]:
    stream = _bytes(*parts)
    return [WORDS[next(stream) % len(WORDS)] for _ in range(count)]


def reference_answer(key: str) -> str:
    """The one right answer for conversation ``key``: ``ANSWER_WORDS`` words."""
    return " ".join(_words(ANSWER_WORDS, "answer", key))


def tokens(text: str) -> list[str]:
    """``" a  b"`` -> ``[" a", "  b"]``: words with their leading whitespace."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(tokens(text))


@dataclass(frozen=True)
class Generation:
    text: str
    finish: str  # "end" (answer complete) | "length" (max_tokens) | "stop" (a stop string)
    stop_sequence: str | None
    output_tokens: int


def generate(
    key: str,
    prefix: str,
    *,
    sample: int = 0,
    temperature: float = 1.0,
    seed: int | None = None,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
) -> Generation:
    """Continue ``prefix`` of the answer to ``key`` (sample number ``sample`` of a request).

    A prefix of the reference answer continues with exactly the rest of it; any other prefix
    continues with words of its own. At temperature 0 every sample follows the reference; above
    it, about a third of the words after the first token are replaced, differently for each
    ``(seed, sample)``.
    """
    answer = reference_answer(key)
    if answer.startswith(prefix):
        rest = answer[len(prefix) :]
    else:
        rest = " " + " ".join(_words(ANSWER_WORDS // 2, "free", prefix))
    pieces = tokens(rest)
    if temperature > 0:
        noise = _bytes("sample", key, prefix, seed, sample)
        for i in range(1, len(pieces)):
            if next(noise) % 3 == 0:
                lead = pieces[i][: len(pieces[i]) - len(pieces[i].lstrip())]
                pieces[i] = lead + WORDS[next(noise) % len(WORDS)]
    kept = pieces[:max_tokens]
    text = "".join(kept)
    cut = [(text.find(s), s) for s in stop if s and s in text]
    if cut:
        at, hit = min(cut)
        text = text[:at]
        return Generation(text, "stop", hit, count_tokens(text))
    finish = "length" if len(pieces) > max_tokens else "end"
    return Generation(text, finish, None, len(kept))
