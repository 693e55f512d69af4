"""Prompts and reference answers: JSONL files or `datasets` hub names, and the data order.

A bad row fails at start with the file and line (or the hub row index) and the field. The data
order is a pure function of (seed, position), so a resumed run draws exactly the prompts the
interrupted one would have, and every rank of a multi-process run draws its own shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(SystemExit):
    """A missing or malformed dataset: the message names the file and line and the field."""


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str | None


def _row_to_example(
    row: object, where: str, prompt_field: str, answer_field: str, need_answer: bool
) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get(prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field {prompt_field!r} (prompt_field) missing or not text")
    answer = row.get(answer_field)
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if need_answer and not answer:
        raise DataError(f"{where}: field {answer_field!r} (answer_field) missing")
    return Example(prompt=prompt, answer=answer)


def read_jsonl(
    path: Path, prompt_field: str, answer_field: str, need_answer: bool
) -> list[Example]:
    examples = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(f"dataset {path}: {err.strerror}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        examples.append(
            _row_to_example(row, f"{path}:{lineno}", prompt_field, answer_field, need_answer)
        )
    if not examples:
        raise DataError(f"dataset {path}: no rows")
    return examples


def read_hub(
    name: str, split: str, prompt_field: str, answer_field: str, need_answer: bool
) -> list[Example]:
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub client raises many types; the message is what matters
        raise DataError(f"dataset {name!r} (split {split!r}) could not be loaded: {err}") from err
    return [
        _row_to_example(row, f"{name}[{split}] row {i}", prompt_field, answer_field, need_answer)
        for i, row in enumerate(rows)
    ]


def load_examples(
    source: str, split: str, prompt_field: str, answer_field: str, *, need_answer: bool
) -> list[Example]:
    """A local ``.jsonl``/``.json`` file (one object per line), else anything ``datasets``
    loads by name: a hub dataset, or a local folder of data files."""
    path = Path(source).expanduser()
    if path.suffix in (".jsonl", ".json") or path.is_file():
        return read_jsonl(path, prompt_field, answer_field, need_answer)
    return read_hub(source, split, prompt_field, answer_field, need_answer)


def split_heldout(examples: list[Example], eval_size: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): the last ``eval_size`` rows are held out."""
    if eval_size >= len(examples):
        raise DataError(
            f"eval_size ({eval_size}) must be smaller than the dataset ({len(examples)} rows);"
            " lower --eval-size or give --eval-dataset"
        )
    if eval_size == 0:
        return examples, []
    return examples[:-eval_size], examples[-eval_size:]


def batch_indices(
    position: int, *, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[int]:
    """Row indices of this rank's share of global batch number ``position``.

    A global batch is ``batch_size × world_size`` consecutive draws from a stream of epochs,
    each epoch a permutation of the rows seeded by (seed, epoch); rank r takes the r-th slice.
    """
    global_batch = batch_size * world_size
    start = position * global_batch + rank * batch_size
    out = []
    for g in range(start, start + batch_size):
        epoch, offset = divmod(g, num_rows)
        out.append(int(epoch_permutation(num_rows, seed, epoch)[offset]))
    return out


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=gen)
