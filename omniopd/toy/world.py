"""A toy world on disk: data splits and three Hugging Face models, each beside its tokenizer.

Layout of a world folder::

    manifest.json          the recipe, its hash, how each model was made (see build.py)
    data/train.jsonl       {"prompt", "answer"} rows; val and eval are disjoint from train
    data/val.jsonl
    data/eval.jsonl
    teacher/               Llama-style model + bpe tokenizer (save_pretrained)
    student/               smaller model, same bpe tokenizer
    teacher-char/          model + character-level tokenizer

Each model folder loads with ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from omniopd.paths import make_readable
from omniopd.toy.chain import make_chain_splits
from omniopd.toy.recipe import TINY, ModelSpec, Recipe
from omniopd.toy.task import Splits, make_splits, write_jsonl
from omniopd.toy.text import char_tokenizer, train_bpe_tokenizer

MODEL_DIRS = {"teacher": "teacher", "student": "student", "teacher_char": "teacher-char"}
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ToyWorld:
    """Paths of a toy world (see the module docstring for the layout)."""

    root: Path
    teacher: Path
    student: Path
    teacher_char: Path
    train: Path
    val: Path
    eval: Path

    @classmethod
    def at(cls, root: Path) -> ToyWorld:
        root = Path(root)
        return cls(
            root=root,
            teacher=root / MODEL_DIRS["teacher"],
            student=root / MODEL_DIRS["student"],
            teacher_char=root / MODEL_DIRS["teacher_char"],
            train=root / "data" / "train.jsonl",
            val=root / "data" / "val.jsonl",
            eval=root / "data" / "eval.jsonl",
        )

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / MANIFEST).read_text())


def world_splits(recipe: Recipe) -> Splits:
    """The recipe's task (``arith`` or ``chain``) cut into its disjoint splits."""
    make = make_chain_splits if recipe.world == "chain" else make_splits
    return make(recipe.data_seed, recipe.n_train, recipe.n_val, recipe.n_eval)


def write_splits(world: ToyWorld, splits: Splits) -> dict[str, int]:
    """The three JSONL files; returns their row counts."""
    return {
        name: write_jsonl(path, (p.row() for p in problems))
        for name, path, problems in (
            ("train", world.train, splits.train),
            ("val", world.val, splits.val),
            ("eval", world.eval, splits.eval),
        )
    }


def make_tokenizers(recipe: Recipe, splits: Splits) -> dict[str, PreTrainedTokenizerFast]:
    """``bpe`` learnt on the training split's prompts and answers, and ``char``."""
    texts = [text for p in splits.train for text in (p.prompt, p.answer)]
    return {
        "bpe": train_bpe_tokenizer(texts, recipe.bpe_vocab_size, recipe.max_length),
        "char": char_tokenizer(recipe.max_length),
    }


def make_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, max_length: int):
    """The Llama configuration of ``spec`` (tied embeddings); raises on an invalid shape."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
    )


def make_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, max_length: int):
    """A randomly initialised Llama-style causal LM, seeded by ``spec.seed``."""
    config = make_config(spec, tokenizer, max_length)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_model(model, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_tiny(out_dir: Path | str, recipe: Recipe = TINY) -> ToyWorld:
    """Randomly initialised teacher, student and teacher-char with their tokenizers, and small
    data splits, in ``out_dir`` (created if missing), in a few seconds. For plumbing tests: the
    models produce nonsense."""
    start = time.perf_counter()
    world = ToyWorld.at(Path(out_dir))
    world.root.mkdir(parents=True, exist_ok=True)
    splits = world_splits(recipe)
    counts = write_splits(world, splits)
    tokenizers = make_tokenizers(recipe, splits)
    made: dict[str, dict[str, Any]] = {}
    for name, folder in MODEL_DIRS.items():
        spec: ModelSpec = getattr(recipe, name)
        tokenizer = tokenizers[spec.tokenizer]
        model = make_model(spec, tokenizer, recipe.max_length)
        save_model(model, tokenizer, world.root / folder)
        made[name] = {"how": "random init", "params": n_params(model), "spec": spec.__dict__}
    manifest = {
        "kind": "tiny",
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "rows": counts,
        "models": made,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (world.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    make_readable(world.root)
    return world
