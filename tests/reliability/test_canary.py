"""Canary secrets never leave the stack: not in any log line, error message, metric, output file
or Redis key or value, in any of the forms a leak could take (as is, URL-encoded, base64, hex).

The whole stack runs as users run it, with ``--log-level DEBUG`` and, once each, ``--log-format
json`` and ``text``: the ``omniopd-gateway`` and ``omniopd-verifier`` processes sharing a Redis
(under a prefix of this test's own), and an ``omniopd-train`` run of two steps through them.
Canary values sit in ``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, a custom ``*_API_KEY`` and the
services' bearer tokens ``OMNIOPD_GATEWAY_TOKEN`` / ``OMNIOPD_VERIFIER_TOKEN``; a second
trainer is started with wrong tokens (canaries too) and must fail without showing them.

The gateway's hosted teachers talk to LOCAL STAND-INS of the Messages API and of an
OpenAI-compatible server (``tests/gateway/standins``, not Anthropic's or OpenAI's services):
one teacher's key is refused with a 401 that echoes the key back, as a careless proxy might,
and injected 429, 500 and 503 answers make the gateway retry and log. tests/gateway/
test_canary_secret.py covers the gateway alone with keys in variables of any name.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import yaml

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc
from tests.gateway.gwtools import anthropic_teacher, request
from tests.gateway.standins import anthropic_api, openai_api
from tests.gateway.standins.server import Fault
from tests.trainer.stack import Process, service_env, train_command

from .abuse import encodings, find_leaks


def canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(12)}"


ANTHROPIC_KEY = "sk-ant-" + canary("anthropic")
OPENAI_KEY = "sk-proj-" + canary("openai")
CUSTOM_KEY = canary("custom")  # a key the stand-in refuses (401, echoing it)
GATEWAY_TOKEN = canary("gateway-token")
VERIFIER_TOKEN = canary("verifier-token")
WRONG_GATEWAY_TOKEN = canary("wrong-gateway-token")  # a trainer's mistake: must not show either
WRONG_VERIFIER_TOKEN = canary("wrong-verifier-token")
CANARIES = (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    CUSTOM_KEY,
    GATEWAY_TOKEN,
    VERIFIER_TOKEN,
    WRONG_GATEWAY_TOKEN,
    WRONG_VERIFIER_TOKEN,
)
CUSTOM_ENV = "CANARY_CUSTOM_API_KEY"
SECRETS_ENV = {
    "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
    "OPENAI_API_KEY": OPENAI_KEY,
    CUSTOM_ENV: CUSTOM_KEY,
    "OMNIOPD_GATEWAY_TOKEN": GATEWAY_TOKEN,
    "OMNIOPD_VERIFIER_TOKEN": VERIFIER_TOKEN,
}
STARTUP_S = 180
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".txt", ".log", ".md", ".csv"}

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def standins():
    claude, claude_state = anthropic_api.start(api_key=ANTHROPIC_KEY)
    oai, oai_state = openai_api.start(api_key=OPENAI_KEY)
    yield (claude, claude_state), (oai, oai_state)
    claude.stop()
    oai.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy world's tiny random student and data, and an 8-row evaluation set."""
    from omniopd.toy import build_tiny

    toy = build_tiny(tmp_path_factory.mktemp("toy"))
    small = toy.root / "data" / "eval-8.jsonl"
    small.write_text("".join(toy.eval.read_text().splitlines(keepends=True)[:8]))
    return toy, small


def teachers(claude_url: str, oai_url: str) -> dict:
    limits = {"requests_per_minute": 100_000, "max_concurrency": 16}  # kept in Redis too
    oai = {
        "name": "oai",
        "provider": "openai",
        "model": "qwen-teacher",
        "base_url": f"{oai_url}/v1",
        "api_key_env": "OPENAI_API_KEY",
        "max_retries": 3,
        "limits": limits,
    }
    return {
        "teachers": [
            anthropic_teacher(
                claude_url, "ANTHROPIC_API_KEY", max_retries=4, max_tokens=64, limits=limits
            ),
            oai,
            anthropic_teacher(claude_url, CUSTOM_ENV, name="refused", max_retries=0),
        ]
    }


def redis_texts(url: str, prefix: str) -> tuple[int, list[str]]:
    """How many keys are under ``prefix``, and each key and its value, whatever the type, as
    text."""
    client = redis.Redis.from_url(url)
    out = []
    keys = 0
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key) or b""]
            elif kind == "hash":
                values = [b for kv in client.hgetall(key).items() for b in kv]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            else:
                values = [client.dump(key) or b""]
            keys += 1
            out.append(key.decode(errors="replace"))
            out += [v.decode(errors="replace") for v in values]
    finally:
        client.close()
    return keys, out


def output_texts(folder: Path) -> list[str]:
    """The text files a run wrote (config, metrics, summaries), not its weights."""
    return [
        p.read_text(errors="replace")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in TEXT_SUFFIXES
    ]


def log_flags(log_format: str) -> list[str]:
    return ["--log-level", "DEBUG", "--log-format", log_format]


class Stack:
    """The gateway and verifier processes of one run, and what the test saw of them."""

    def __init__(self, tmp: Path, formats: Formats, config: dict, env: dict[str, str]) -> None:
        path = tmp / "teachers.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = ["omniopd.gateway", "--config", str(path), "--port", "0", "--metrics-port", "0"]
        verifier = ["omniopd.verifier.cli", "--port", "0", "--device", "cpu"]
        self.gateway = Process.start(
            [sys.executable, "-m", *gateway, *log_flags(formats.gateway)], env=env
        )
        self.verifier = Process.start(
            [sys.executable, "-m", *verifier, *log_flags(formats.verifier)], env=env
        )

    def wait(self) -> tuple[str, int, str]:
        """(gateway address, gateway metrics port, verifier URL) once both serve."""
        metrics = self.gateway.wait_for(re.compile(r"metrics on http://[\d.]+:(\d+)/"), STARTUP_S)
        ready = self.gateway.wait_for(re.compile(r"teacher\(s\) on ([\d.]+:\d+) \("), STARTUP_S)
        verifier = self.verifier.wait_for(re.compile(r"verifier on (http://[\d.]+:\d+) "), 300)
        deadline = time.monotonic() + STARTUP_S
        while httpx.get(f"{verifier[1]}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the verifier's model did not load"
            time.sleep(0.2)  # the model loads after the line above
        return ready[1], int(metrics[1]), verifier[1]

    def stop(self) -> list[str]:
        self.gateway.stop()
        self.verifier.stop()
        return self.gateway.lines + self.verifier.lines


def gateway_traffic(address: str, claude_state, oai_state) -> tuple[list[str], int]:
    """Good, retried and refused calls; everything the client got back, and the call count."""
    seen: list[str] = []
    calls = 0
    auth = (("authorization", f"Bearer {GATEWAY_TOKEN}"),)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TeacherGatewayStub(channel)
        claude_state.inject(Fault(status=429, retry_after=0.05), Fault(status=500))
        oai_state.inject(Fault(status=503), Fault(status=429, retry_after_ms=50))
        refused = []
        for teacher in ("claude", "oai", "refused", "claude", "oai"):
            ask = request(teacher, content=f"A question for {teacher}?", n=2, max_tokens=16)
            calls += 1
            try:
                seen.append(str(stub.SampleChunks(ask, metadata=auth, timeout=60)))
            except grpc.RpcError as err:
                seen += [err.details() or "", str(err.trailing_metadata())]
                refused.append((teacher, err.code()))
        assert refused == [("refused", grpc.StatusCode.FAILED_PRECONDITION)]
        for wrong in ((("authorization", f"Bearer {WRONG_GATEWAY_TOKEN}"),), None):
            calls += 1
            try:
                stub.ListTeachers(pb.ListTeachersRequest(), metadata=wrong, timeout=30)
            except grpc.RpcError as err:
                seen.append(err.details() or "")
        asks = [request(t, content="Streamed?", request_id=t) for t in ("refused", "oai")]
        calls += len(asks)
        replies = list(stub.StreamChunks(iter(asks), metadata=auth, timeout=60))
        assert sorted(bool(r.chunks) for r in replies) == [False, True]
        seen += [str(r) for r in replies]
        calls += 1
        seen.append(str(stub.ListTeachers(pb.ListTeachersRequest(), metadata=auth, timeout=30)))
    return seen, calls


def verifier_traffic(url: str) -> tuple[list[str], int]:
    seen: list[str] = []
    body = {"groups": [{"drafts": ["x = 4", "x = 5"], "teacher": ["x = 4", "x is 4"]}]}
    asks = [
        ("/v1/score", body, VERIFIER_TOKEN, 200),
        ("/v1/embeddings", {"input": ["x = 4"]}, VERIFIER_TOKEN, 200),
        ("/v1/score", body, WRONG_VERIFIER_TOKEN, 401),
        ("/v1/score", body, None, 401),
        ("/v1/score", {"groups": [{"drafts": []}]}, VERIFIER_TOKEN, 422),
        ("/v1/embeddings", {"input": ["x"], "model": "other"}, VERIFIER_TOKEN, 404),
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, payload, token, status in asks:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = client.post(path, json=payload, headers=headers)
            assert r.status_code == status, (path, r.status_code, r.text)
            seen.append(f"{r.headers}\n{r.text}")
    return seen, len(asks)


def trainer_args(world, out: Path, gateway: str, verifier: str, log_format: str) -> list[str]:
    toy, eval_set = world
    return [
        "--method", "omniopd",
        "--gateway", gateway,
        "--teacher", "claude",
        "--verifier", verifier,
        "--device", "cpu",
        "--student", str(toy.student),
        "--dataset", str(toy.train),
        "--eval-dataset", str(eval_set),
        "--output-dir", str(out),
        "--steps", "2",
        "--batch-size", "2",
        "--max-new-tokens", "16",
        "--eval-every", "0",
        "--save-every", "2",
        "--num-drafts", "2",
        "--chunk-tokens", "4",
        "--teacher-samples", "2",
        "--fork-quantile", "0.5",
        "--min-fork-entropy", "0",
        "--chunks-per-response", "1",
        *log_flags(log_format),
    ]  # fmt: skip


@dataclass(frozen=True)
class Formats:
    """The ``--log-format`` of each process of one run."""

    gateway: str
    verifier: str
    trainer: str
    refused_trainer: str


# The bounded run covers both formats across the processes; the full one runs each process in
# each format.
RUNS = [Formats("json", "text", "json", "text"), Formats("text", "json", "text", "json")]


def test_canaries_appear_nowhere(standins, world, tmp_path, redis_url, redis_prefix, scale, ledger):
    (claude, claude_state), (oai, oai_state) = standins
    for i, formats in enumerate(RUNS if scale.full else RUNS[:1]):
        claude_state.reset()
        oai_state.reset()
        run = Run(tmp_path / f"run-{i}", formats, redis_url, f"{redis_prefix}{i}:")
        run.go(world, claude, claude_state, oai, oai_state)

        # The canaries were live: the stand-ins were sent the keys (and the refused one came
        # back in the stand-in's 401), the services logged at DEBUG, the cache and the limits
        # filled Redis.
        presented = {
            r.headers.get("x-api-key") or r.headers.get("authorization", "").removeprefix("Bearer ")
            for r in [*claude_state.requests, *oai_state.requests]
        }
        assert {ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY} <= presented
        log_text = "".join(run.lines)
        assert "retrying" in log_text and "401 Unauthorized" in log_text
        assert '"level": "debug"' in log_text and " DEBUG " in log_text  # both formats
        assert any(":gw:" in s for s in run.stored) and any(":emb:" in s for s in run.stored)

        leaks = find_leaks([*run.lines, *run.seen, *run.stored], CANARIES)
        ledger.add(
            "canary",
            requests=run.requests,
            notes={
                "log_formats": vars(formats),
                "lines_scanned": len(run.lines),
                "texts_scanned": len(run.seen),
                "keys_scanned": run.keys,
                "provider_calls": len(claude_state.requests) + len(oai_state.requests),
                "canaries": len(CANARIES),
                "forms_per_canary": len(encodings(ANTHROPIC_KEY)),
            },
        )
        assert not leaks, f"canaries leaked: {leaks[:10]}"


class Run:
    """One run of the stack and the trainers; what it logged, showed and stored."""

    def __init__(self, folder: Path, formats: Formats, redis_url: str, prefix: str) -> None:
        folder.mkdir()
        self.folder = folder
        self.formats = formats
        self.redis_url = redis_url
        self.prefix = prefix
        self.env = service_env(
            **SECRETS_ENV,
            REDIS_URL=redis_url,
            OMNIOPD_GATEWAY_REDIS_PREFIX=f"{prefix}gw:",
            OMNIOPD_VERIFIER_REDIS_PREFIX=f"{prefix}emb:",
        )
        self.lines: list[str] = []  # log lines
        self.seen: list[str] = []  # what a client, an operator or an output file shows
        self.stored: list[str] = []  # Redis keys and values
        self.keys = 0
        self.requests = 0  # calls made by this test

    def go(self, world, claude, claude_state, oai, oai_state) -> None:
        config = teachers(claude.url, oai.url)
        stack = Stack(self.folder, self.formats, config, self.env)
        try:
            gateway, metrics_port, verifier = stack.wait()
            texts, n = gateway_traffic(gateway, claude_state, oai_state)
            self.seen += texts
            self.requests += n
            texts, n = verifier_traffic(verifier)
            self.seen += texts
            self.requests += n

            # A short training run through both services, with provider errors on the way;
            # beside it the same run with wrong tokens, which fails at start, naming the
            # services, not the tokens.
            claude_state.inject(Fault(status=500), Fault(status=503), Fault(status=429))
            out, refused_out = self.folder / "train", self.folder / "refused"
            trainer = Process.start(
                train_command(*trainer_args(world, out, gateway, verifier, self.formats.trainer)),
                env=self.env,
            )
            wrong = {"OMNIOPD_GATEWAY_TOKEN": WRONG_GATEWAY_TOKEN}
            wrong["OMNIOPD_VERIFIER_TOKEN"] = WRONG_VERIFIER_TOKEN
            argv = trainer_args(world, refused_out, gateway, verifier, self.formats.refused_trainer)
            refused = Process.start(train_command(*argv), env=self.env | wrong)
            assert trainer.proc.wait(timeout=600) == 0, trainer.output[-4000:]
            assert refused.proc.wait(timeout=600) != 0
            assert "UNAUTHENTICATED" in refused.output or "401" in refused.output, refused.output
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows] == [1, 2]
            self.lines += trainer.lines + refused.lines
            self.seen += output_texts(out) + output_texts(refused_out)

            gw_metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
            self.seen += [gw_metrics.decode(), httpx.get(f"{verifier}/metrics", timeout=30).text]
            self.requests += 2
            self.keys, self.stored = redis_texts(self.redis_url, self.prefix)
        finally:
            self.lines += stack.stop()
