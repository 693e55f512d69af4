"""The task: deterministic generation, disjoint splits, worked answers, the answer checker."""

from __future__ import annotations

import json

import pytest

from omniopd.toy.task import (
    Problem,
    all_problems,
    check_answer,
    extract_answer,
    make_splits,
    read_jsonl,
    write_jsonl,
)


def test_the_worked_answer_matches_the_issue_example():
    p = Problem(a=37, b=48, c=2, form="a+b*c")
    assert p.prompt == "Q: 37+48*2=?"
    assert p.answer == "48*2=96. 37+96=133. #### 133"
    q = Problem(a=37, b=48, c=2, form="b*c+a")
    assert (q.prompt, q.answer) == ("Q: 48*2+37=?", "48*2=96. 96+37=133. #### 133")


def test_every_answer_is_right_and_the_pool_has_no_duplicates():
    pool = all_problems()
    assert len({p.prompt for p in pool}) == len(pool) == 2 * 90 * 90 * 8
    for p in pool[::97]:
        assert int(extract_answer(p.answer)) == eval(p.prompt[3:-2])  # the prompt's arithmetic


def test_generation_is_deterministic_in_the_seed():
    one, two = make_splits(7, 300, 50, 50), make_splits(7, 300, 50, 50)
    assert one == two
    other = make_splits(8, 300, 50, 50)
    assert [p.prompt for p in other.eval] != [p.prompt for p in one.eval]


def test_splits_are_disjoint_and_sized():
    s = make_splits(0, 5000, 500, 500)
    train, val, ev = ({p.prompt for p in split} for split in (s.train, s.val, s.eval))
    assert (len(train), len(val), len(ev)) == (5000, 500, 500)
    assert not train & val and not train & ev and not val & ev


def test_eval_split_does_not_move_when_train_grows():
    assert make_splits(3, 100, 10, 40).eval == make_splits(3, 9000, 10, 40).eval


def test_split_sizes_are_checked():
    with pytest.raises(ValueError, match="exceeds the 129600 problems"):
        make_splits(0, 129_600, 1, 0)
    with pytest.raises(ValueError, match="n_val=-1"):
        make_splits(0, 1, -1, 0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("48*2=96. 37+96=133. #### 133", "133"),
        ("#### 12\nmore text", "12"),
        ("#### 1 #### 2", "2"),
        ("no answer here", None),
        ("ends with ####", None),
        ("####   -4.5  ", "-4.5"),
    ],
)
def test_extract_answer(text, value):
    assert extract_answer(text) == value


@pytest.mark.parametrize(
    ("response", "reference", "ok"),
    [
        ("48*2=96. 37+96=133. #### 133", "48*2=96. 37+96=133. #### 133", True),
        ("wrong steps. #### 133", "#### 133", True),
        ("#### 133", "133", True),
        ("#### 133.0", "133", True),
        ("#### 134", "133", False),
        ("#### 1330", "133", False),
        ("133", "133", False),  # no #### line: no answer
        ("#### ", "133", False),
        ("#### 133", "", False),
        ("#### 1/2", "0.5", True),  # free-form: math-verify
        ("#### \\frac{1}{2}", "1/2", True),
        ("#### 1/3", "0.5", False),
        ("#### x+1", "1+x", True),
    ],
)
def test_check_answer(response, reference, ok):
    assert check_answer(response, reference) is ok


def test_jsonl_round_trip_and_datasets_loads_it(tmp_path):
    rows = [p.row() for p in make_splits(0, 10, 0, 0).train]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, rows) == 10
    assert list(read_jsonl(path)) == rows
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(path), split="train")
    assert ds.column_names == ["prompt", "answer"] and ds[3] == rows[3]


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n" + json.dumps({"prompt": 1}))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'prompt'"):
        list(read_jsonl(path))
