"""``build_tiny``: three random models that load as users load them, and small splits."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omniopd.toy import ToyWorld
from omniopd.toy.task import read_jsonl


def test_every_model_loads_with_from_pretrained_and_generates(tiny_world: ToyWorld):
    for path in (tiny_world.teacher, tiny_world.student, tiny_world.teacher_char):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        prefix = tok.apply_chat_template(
            [{"role": "user", "content": "Q: 1+2*3=?"}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 4
        assert model.config.vocab_size == len(tok)


def test_student_shares_the_teacher_tokenizer_and_teacher_char_does_not(tiny_world: ToyWorld):
    teacher = AutoTokenizer.from_pretrained(tiny_world.teacher)
    student = AutoTokenizer.from_pretrained(tiny_world.student)
    char = AutoTokenizer.from_pretrained(tiny_world.teacher_char)
    assert teacher.get_vocab() == student.get_vocab()
    assert teacher.get_vocab() != char.get_vocab()
    s, t = (
        AutoModelForCausalLM.from_pretrained(p) for p in (tiny_world.student, tiny_world.teacher)
    )
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in t.parameters())


def test_splits_are_written_and_disjoint(tiny_world: ToyWorld):
    prompts = {
        name: [r["prompt"] for r in read_jsonl(path)]
        for name, path in (
            ("train", tiny_world.train),
            ("val", tiny_world.val),
            ("eval", tiny_world.eval),
        )
    }
    assert all(prompts.values())
    assert not set(prompts["train"]) & set(prompts["eval"])
    assert not set(prompts["val"]) & (set(prompts["eval"]) | set(prompts["train"]))
    assert tiny_world.manifest["kind"] == "tiny"


def test_build_tiny_is_deterministic(tiny_world: ToyWorld, tmp_path):
    from omniopd.toy import build_tiny

    again = build_tiny(tmp_path / "again")
    a = AutoModelForCausalLM.from_pretrained(tiny_world.teacher).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again.teacher).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.eval.read_text() == tiny_world.eval.read_text()


def test_cli_tiny_prints_the_world_path(tmp_path):
    out = tmp_path / "cli-world"
    done = subprocess.run(
        [sys.executable, "-m", "omniopd.toy.cli", "tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert ToyWorld.at(out).manifest["kind"] == "tiny"
