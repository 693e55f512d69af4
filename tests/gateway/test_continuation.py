"""Continuation helpers (prefill whitespace, instruction messages, echo stripping) and the
per-teacher auto switch: pure functions, checked by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniopd.gateway.providers import Message
from omniopd.gateway.providers.continuation import (
    MIN_ECHO_CHARS,
    ContinuationMode,
    instruction_messages,
    prefill_messages,
    rejoin_after_whitespace,
    split_trailing_whitespace,
    strip_repeated_prefix,
)

whitespace = st.text(alphabet=" \n\t", max_size=4)
words = st.lists(st.from_regex(r"[A-Za-z0-9=+.]{1,8}", fullmatch=True), min_size=1, max_size=12)
stems = words.map(" ".join)
texts = st.text(alphabet="ab =\n", max_size=30)


# -- prefill ------------------------------------------------------------------------------------


def test_trailing_whitespace_is_held_back():
    assert split_trailing_whitespace("x = 1 +  \n") == ("x = 1 +", "  \n")
    assert split_trailing_whitespace("done") == ("done", "")
    assert split_trailing_whitespace("  ") == ("", "  ")


@given(stem=stems, held=whitespace, text=texts)
def test_a_continuation_that_repeats_the_held_whitespace_loses_it(stem, held, text):
    # The model continued `stem` with held + text: the caller, who has stem + held, gets text.
    assert rejoin_after_whitespace(held, held + text) == text


@given(held=whitespace.filter(bool), text=st.text(alphabet="ab ", max_size=20))
def test_rejoined_answer_never_doubles_the_held_whitespace(held, text):
    out = rejoin_after_whitespace(held, text)
    assert out == text or text.endswith(out)  # only ever drops a leading part
    if not text.startswith(held):
        assert not out[:1].isspace()  # partial answer's whitespace stands; no second run


def test_rejoin_examples():
    assert rejoin_after_whitespace(" ", " 42") == "42"
    assert rejoin_after_whitespace("\n\n", "\nx") == "x"
    assert rejoin_after_whitespace("\n", " x") == "x"
    assert rejoin_after_whitespace(" ", "x") == "x"
    assert rejoin_after_whitespace("", " x") == " x"


def test_prefill_messages():
    convo = (Message("system", "s"), Message("user", "q"))
    out, held = prefill_messages(convo, "a b \n")
    assert out == [*convo, Message("assistant", "a b")] and held == " \n"
    out, held = prefill_messages(convo, " \n")
    assert out == list(convo) and held == " \n"  # no empty assistant turn


# -- instruction --------------------------------------------------------------------------------


def test_instruction_joins_the_last_user_turn():
    convo = (Message("system", "be brief"), Message("user", "What is 2+3?"))
    out = instruction_messages(convo, "2 + 3 =")
    assert out[0] == convo[0] and len(out) == 2
    assert out[1].role == "user"
    assert out[1].content.startswith("What is 2+3?")
    assert "<answer_so_far>\n2 + 3 =\n</answer_so_far>" in out[1].content


def test_instruction_without_a_partial_answer_sends_the_conversation_as_is():
    convo = (Message("user", "q"),)
    assert instruction_messages(convo, "") == list(convo)
    assert instruction_messages(convo, "  ") == list(convo)


def test_instruction_after_an_assistant_turn_adds_a_user_turn():
    convo = (Message("user", "q"), Message("assistant", "a"))
    out = instruction_messages(convo, "part")
    assert out[:2] == list(convo) and out[2].role == "user" and "part" in out[2].content


@given(stem=stems, held=whitespace, rest=texts)
def test_a_full_echo_is_stripped(stem, held, rest):
    partial = stem + held
    assert strip_repeated_prefix(partial, partial + rest) == rest
    assert strip_repeated_prefix(partial, "  " + stem + held + rest) == rest


@given(head=stems, tail=stems, rest=st.text(alphabet="xyz ", max_size=20))
def test_an_echo_of_the_last_words_is_stripped(head, tail, rest):
    partial = f"{head} {tail}"
    if len(tail) < MIN_ECHO_CHARS:
        tail = partial  # too short to count unless it is the whole partial answer
    assert strip_repeated_prefix(partial, tail + rest) == rest


def test_strip_examples():
    partial = "First, 17 + 25: add the units, 7 + 5 = 12, "
    assert strip_repeated_prefix(partial, "carry 1.") == "carry 1."
    # Echo of the last words (at least MIN_ECHO_CHARS, starting a word).
    assert strip_repeated_prefix(partial, "add the units, 7 + 5 = 12, carry 1.") == "carry 1."
    # A short coincidence is not an echo.
    assert strip_repeated_prefix("so the sum is", "is 42") == "is 42"
    # An overlap that would start mid-word is not an echo.
    assert strip_repeated_prefix("xxadd the units, 7 + 5 =", "dd the units, 7 + 5 = 12") == (
        "dd the units, 7 + 5 = 12"
    )
    assert strip_repeated_prefix("", "anything") == "anything"
    assert strip_repeated_prefix("abc", "") == ""


# -- the per-teacher switch ---------------------------------------------------------------------


def test_auto_falls_back_once_and_reports_it():
    seen: list[str] = []
    mode = ContinuationMode("haiku", "auto", on_fallback=seen.append)
    assert mode.current == "prefill" and mode.can_fall_back
    mode.fall_back("HTTP 400")
    mode.fall_back("HTTP 400 again")
    assert mode.current == "instruction" and mode.fallbacks == 1 and seen == ["haiku"]
    assert not mode.can_fall_back


@pytest.mark.parametrize("configured", ["prefill", "instruction"])
def test_explicit_modes_never_fall_back(configured):
    mode = ContinuationMode("t", configured)
    assert mode.current == configured and not mode.can_fall_back
