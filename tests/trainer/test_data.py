"""Datasets: bad rows name the file and line; the data order is resumable and sharded."""

from __future__ import annotations

import json

import pytest

from omniopd.trainer.data import DataError, batch_indices, load_examples, split_heldout


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_reads_rows(tmp_path):
    src = write(
        tmp_path / "d.jsonl", [json.dumps({"q": "1+1=", "a": 2}), "", json.dumps({"q": "2+2="})]
    )
    rows = load_examples(src, "train", "q", "a", need_answer=False)
    assert [(r.prompt, r.answer) for r in rows] == [("1+1=", "2"), ("2+2=", None)]


def test_malformed_json_names_file_and_line(tmp_path):
    src = write(tmp_path / "d.jsonl", [json.dumps({"prompt": "a"}), "{not json"])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_examples(src, "train", "prompt", "answer", need_answer=False)


def test_missing_field_names_file_line_and_field(tmp_path):
    src = write(tmp_path / "d.jsonl", [json.dumps({"prompt": "a"}), json.dumps({"question": "b"})])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'prompt' \(prompt_field\)"):
        load_examples(src, "train", "prompt", "answer", need_answer=False)
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'answer' \(answer_field\) missing"):
        load_examples(src, "train", "prompt", "answer", need_answer=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="No such file"):
        load_examples(str(tmp_path / "none.jsonl"), "train", "prompt", "answer", need_answer=False)


def test_heldout_split():
    rows = list(range(10))
    assert split_heldout(rows, 3) == (list(range(7)), [7, 8, 9])
    with pytest.raises(DataError, match="eval_size"):
        split_heldout(rows, 10)


def test_batches_cover_each_epoch_once_and_are_reproducible():
    n, B = 10, 4
    drawn = [i for pos in range(5) for i in batch_indices(pos, num_rows=n, batch_size=B, seed=1)]
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    assert batch_indices(3, num_rows=n, batch_size=B, seed=1) == drawn[12:16]
    assert batch_indices(3, num_rows=n, batch_size=B, seed=2) != drawn[12:16]


def test_ranks_draw_disjoint_shards_of_the_global_batch():
    n, B = 16, 4
    single = batch_indices(0, num_rows=n, batch_size=2 * B, seed=0)
    r0 = batch_indices(0, num_rows=n, batch_size=B, seed=0, rank=0, world_size=2)
    r1 = batch_indices(0, num_rows=n, batch_size=B, seed=0, rank=1, world_size=2)
    assert r0 + r1 == single


def test_datasets_name_path_and_row_errors(tmp_path):
    """A name ``datasets.load_dataset`` resolves (here a local folder, as there is no hub)."""
    folder = tmp_path / "arith"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        json.dumps({"question": "1+1=", "final": "2"})
        + "\n"
        + json.dumps({"question": "3+3="})
        + "\n"
    )
    rows = load_examples(str(folder), "train", "question", "final", need_answer=False)
    assert [(r.prompt, r.answer) for r in rows] == [("1+1=", "2"), ("3+3=", None)]
    with pytest.raises(DataError, match=r"arith\[train\] row 1: field 'final' \(answer_field\)"):
        load_examples(str(folder), "train", "question", "final", need_answer=True)
    with pytest.raises(DataError, match=r"could not be loaded"):
        load_examples(str(tmp_path / "no-such-dataset"), "train", "q", "a", need_answer=False)
