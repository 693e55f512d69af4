"""How a chat teacher continues a partial answer: by prefill or by instruction.

Chat APIs answer a conversation; the trainer needs the *rest* of an answer it already started.
Two ways to ask for it, shared by the ``anthropic`` and ``openai`` providers:

* **prefill** sends the partial answer as the last (assistant) message, so the model continues
  it token by token: a true continuation. Trailing whitespace is moved out of the prefill first
  (the Anthropic Messages API refuses a final assistant turn that ends in whitespace, and many
  chat templates trim it anyway) and put back when the continuation is joined on
  (:func:`split_trailing_whitespace`, :func:`rejoin_after_whitespace`).
* **instruction** puts the partial answer inside the user's turn with a request to continue it
  verbatim (:func:`instruction_messages`). Models often start their reply by repeating some of
  the answer so far; :func:`strip_repeated_prefix` removes that echo.

``auto`` tries prefill and, the first time the backend answers that prefill is unsupported
(Claude 4.6 and later, OpenAI, Gemini), switches that teacher to instruction for good
(:class:`ContinuationMode`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from omniopd.gateway.providers.base import Message

log = logging.getLogger(__name__)

Mode = Literal["prefill", "instruction"]

# An echo shorter than this many characters is not stripped unless it is the whole partial
# answer: a reply that merely starts with the same short word ("the", "= ") is not an echo.
MIN_ECHO_CHARS = 16

INSTRUCTION_TEMPLATE = (
    "{request}\n\n"
    "You have already started answering the message above. Your answer so far is written "
    "between the <answer_so_far> tags below. Continue that answer from exactly where it stops, "
    "as if you had never been interrupted. Reply with the continuation only: do not repeat any "
    "of the answer so far, and add no preamble, quotation marks or commentary.\n\n"
    "<answer_so_far>\n{partial}\n</answer_so_far>"
)


# -- prefill ------------------------------------------------------------------------------------


def split_trailing_whitespace(partial: str) -> tuple[str, str]:
    """``"x = 1 +  \\n"`` -> ``("x = 1 +", "  \\n")``: the stem to prefill and the whitespace held back."""
    stem = partial.rstrip()
    return stem, partial[len(stem) :]


def rejoin_after_whitespace(held: str, text: str) -> str:
    """The continuation of ``stem + held`` given the model's continuation ``text`` of ``stem``.

    The model saw the stem without its trailing whitespace ``held``. Whatever part of ``held``
    the model wrote again at the start of ``text`` is already in the caller's partial answer, so
    it is dropped; if the model wrote less whitespace than was held back (``held="\\n\\n"``,
    ``text="\\nx"``), the partial answer's whitespace stands and the model's is dropped too.
    """
    if not held:
        return text
    common = 0
    for a, b in zip(held, text, strict=False):
        if a != b:
            break
        common += 1
    rest = text[common:]
    return rest.lstrip() if common < len(held) else rest


def prefill_messages(
    messages: tuple[Message, ...], partial_answer: str
) -> tuple[list[Message], str]:
    """The conversation with the partial answer as a final assistant turn, and the held whitespace.

    An empty (or all-whitespace) partial answer adds no assistant turn: the model then answers
    from the start, which is the continuation of an empty answer.
    """
    stem, held = split_trailing_whitespace(partial_answer)
    out = list(messages)
    if stem:
        out.append(Message("assistant", stem))
    return out, held


# -- instruction --------------------------------------------------------------------------------


def instruction_messages(messages: tuple[Message, ...], partial_answer: str) -> list[Message]:
    """The conversation with the partial answer and a continue-it request in the user's turn.

    The request joins the last user message (the contract's conversations end with one); a
    conversation that does not end with a user turn gets a new one. An empty partial answer
    needs no instruction: the conversation is sent as it is.
    """
    out = list(messages)
    if not partial_answer.strip():
        return out
    request = out.pop().content if out and out[-1].role == "user" else "Continue your answer."
    out.append(
        Message("user", INSTRUCTION_TEMPLATE.format(request=request, partial=partial_answer))
    )
    return out


def strip_repeated_prefix(partial_answer: str, reply: str) -> str:
    """The reply to an instruction request without any repeat of the answer so far.

    Handles the common echoes: the whole partial answer again (``"x = 2. So y = 3"`` for the
    partial ``"x = 2."``), or its last words (``"... so y = 3"``), each possibly after leading
    whitespace. An overlap shorter than :data:`MIN_ECHO_CHARS` counts only when it is the whole
    partial answer, and an overlap must start at a word boundary of the partial answer, so a
    reply that happens to begin like the partial answer ends is kept whole.
    """
    stem, held = split_trailing_whitespace(partial_answer)
    stem, body = stem.lstrip(), reply.lstrip()
    if not stem or not body:
        return reply
    if body.startswith(stem):
        return rejoin_after_whitespace(held, body[len(stem) :])
    # Longest echo first: suffixes of the stem that start a word, at least MIN_ECHO_CHARS long.
    word_starts = (i + 1 for i, ch in enumerate(stem) if ch.isspace() and not stem[i + 1].isspace())
    for start in word_starts:
        echo = stem[start:]
        if len(echo) < MIN_ECHO_CHARS:
            break
        if body.startswith(echo):
            return rejoin_after_whitespace(held, body[len(echo) :])
    return reply


# -- the per-teacher mode -----------------------------------------------------------------------


class ContinuationMode:
    """Which way one teacher continues partial answers, and its one-way switch for ``auto``.

    ``configured`` is the teacher's ``continuation`` setting. ``auto`` starts as prefill and
    moves to instruction the first time the backend refuses a prefill (:meth:`fall_back`);
    the switch is logged once and counted in :attr:`fallbacks` (and reported to ``on_fallback``,
    which the gateway core wires to its ``continuation_fallbacks_total{teacher}`` metric).
    """

    def __init__(
        self,
        teacher: str,
        configured: Literal["prefill", "instruction", "auto"],
        *,
        initial: Mode | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.teacher = teacher
        self.configured = configured
        self.current: Mode = initial or (
            "instruction" if configured == "instruction" else "prefill"
        )
        self.fallbacks = 0
        self.on_fallback = on_fallback

    @property
    def can_fall_back(self) -> bool:
        return self.configured == "auto" and self.current == "prefill"

    def fall_back(self, reason: str) -> None:
        """Switch this teacher to instruction for good (idempotent: concurrent refusals switch once)."""
        if self.current == "instruction":
            return
        self.current = "instruction"
        self.fallbacks += 1
        log.warning(
            "teacher %r: the backend refused an assistant prefill (%s); continuing partial "
            "answers by instruction from now on",
            self.teacher,
            reason,
        )
        if self.on_fallback is not None:
            self.on_fallback(self.teacher)
