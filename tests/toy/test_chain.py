"""The chain world's task (omniopd/toy/chain.py): right and checkable answers of 60-150 tokens,
disjoint and reproducible splits, a context that holds the longest answer, and the bands the
builder enforces. The trained chain world is built by ``make toy-chain``, not here."""

from __future__ import annotations

import random
import re

import pytest
from transformers import AutoTokenizer

from omniopd.toy import build_tiny
from omniopd.toy.build import BandsMissed, check_bands
from omniopd.toy.chain import MAX_VALUE, ChainProblem, make_chain_splits, sample_problem
from omniopd.toy.recipe import BANDS, CHAIN, EVAL_MAX_NEW_TOKENS, TINY_CHAIN, Recipe
from omniopd.toy.task import check_answer, extract_answer, read_jsonl

STEP = re.compile(r"(\d)\) (Add|Subtract|Multiply by) (\d+): (\d+)([-+*])(\d+)=(\d+)\.")


def test_the_answer_writes_every_step_then_the_value():
    p = ChainProblem(347, (("+", 58), ("-", 90), ("-", 90), ("-", 90), ("-", 90), ("*", 3)))
    assert p.prompt == (
        "Q: Start at 347; 1) add 58; 2) subtract 90; 3) subtract 90; 4) subtract 90; "
        "5) subtract 90; 6) multiply by 3. Result?"
    )
    assert p.answer == (
        "1) Add 58: 347+58=405. 2) Subtract 90: 405-90=315. 3) Subtract 90: 315-90=225. "
        "4) Subtract 90: 225-90=135. 5) Subtract 90: 135-90=45. 6) Multiply by 3: 45*3=135. "
        "#### 135"
    )
    assert check_answer(p.answer, p.answer) and not check_answer("... #### 136", p.answer)


def test_sampled_problems_are_right_and_in_range():
    rng = random.Random(5)
    for _ in range(500):
        p = sample_problem(rng)
        steps = STEP.findall(p.answer)
        assert 4 <= len(steps) == len(p.ops) <= 6
        before = p.start
        for k, ((n, _, x, a, op, b, result), (want_op, want_x)) in enumerate(
            zip(steps, p.ops, strict=True), 1
        ):
            assert (int(n), op, int(x), int(b)) == (k, want_op, want_x, want_x)
            assert int(a) == before
            assert int(result) == eval(f"{a}{op}{b}") and 0 <= int(result) <= MAX_VALUE
            if op == "*":
                assert 10 <= before < 100
            before = int(result)
        assert int(extract_answer(p.answer)) == p.value == before
        assert check_answer(p.answer, p.row()["answer"])


def test_splits_are_disjoint_reproducible_and_keep_eval_fixed():
    s = make_chain_splits(3, 3000, 200, 300)
    prompts = [{p.prompt for p in part} for part in (s.train, s.val, s.eval)]
    assert [len(p) for p in prompts] == [3000, 200, 300]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert s == make_chain_splits(3, 3000, 200, 300)
    assert make_chain_splits(3, 10, 5, 300).eval == s.eval
    assert make_chain_splits(4, 10, 5, 300).eval != s.eval
    with pytest.raises(ValueError, match="split sizes"):
        make_chain_splits(0, 1, -1, 0)


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny-chain"), TINY_CHAIN)


def test_answers_run_to_several_chunks_and_fit_the_context(tiny_chain):
    bpe = AutoTokenizer.from_pretrained(tiny_chain.student)
    char = AutoTokenizer.from_pretrained(tiny_chain.teacher_char)
    rows = list(read_jsonl(tiny_chain.train))
    lengths = [len(bpe(r["answer"])["input_ids"]) for r in rows]
    assert min(lengths) >= 60 and max(lengths) <= 150
    for r in rows:  # the longest tokenisation (char) of prompt, answer and end of turn fits
        text = char.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        answer = len(char(r["answer"])["input_ids"]) + 1
        assert len(char(text)["input_ids"]) + answer <= CHAIN.max_length
        assert answer <= EVAL_MAX_NEW_TOKENS["chain"]
    assert tiny_chain.manifest["recipe"]["world"] == "chain"


def test_the_arith_recipe_keeps_its_hash_and_chain_gets_its_own():
    """Worlds cached before there were two keep their folder: ``world`` is left out of the
    arith recipe's JSON; the chain recipe's differs."""
    assert "world" not in Recipe().to_dict() and CHAIN.to_dict()["world"] == "chain"
    assert CHAIN.hash() != Recipe().hash()
    with pytest.raises(ValueError, match="world must be one of"):
        Recipe(world="algebra")


def report(teacher: float, char: float, student: float) -> dict:
    accs = {"teacher": teacher, "teacher_char": char, "student": student}
    return {name: {"eval": {"accuracy_greedy": acc}} for name, acc in accs.items()}


def test_the_builder_refuses_a_world_outside_its_bands():
    check_bands("chain", report(0.85, 0.81, 0.25))
    with pytest.raises(BandsMissed) as err:
        check_bands("chain", report(0.742, 0.9, 0.45))
    message = str(err.value)
    assert "teacher 0.742, 0.058 below the band's 0.80" in message
    assert "student 0.450, 0.050 above the band's 0.40" in message
    assert "teacher_char" not in message
    assert BANDS["chain"]["student"] == (0.10, 0.40)
