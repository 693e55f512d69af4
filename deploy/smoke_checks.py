"""The checks deploy/smoke.sh runs from the host against the containers, and its last line.

    python deploy/smoke_checks.py services --gateway 127.0.0.1:50151 \\
        --verifier http://127.0.0.1:8190 --teacher toy --prompts world/data/train.jsonl
    python deploy/smoke_checks.py train --run runs/smoke --steps 2
    python deploy/smoke_checks.py report results.tsv

``services`` talks to the verifier over HTTP (``/readyz``, a ``/v1/score`` request with the
embedding metric, through the project's client) and to the gateway over gRPC (the standard
health service, reflection, ``ListTeachers``, a ``SampleChunks`` sample, and the same request
again, which must come back from the cache with the same chunks). ``train`` reads a finished
``omniopd-train`` run. Both print one JSON object, ``{check: {"ok": bool, "detail": str}}``,
append ``check<TAB>name<TAB>pass|fail`` lines to ``--results`` when given, and exit 1 when a
check failed. ``report`` turns the results file smoke.sh writes (lines of
``kind<TAB>name<TAB>value``) into the one-line JSON summary that ends its output.

Only the project's own packages and what they install are used (grpcio, grpcio-health-checking,
grpcio-reflection, httpx): run with the project's ``.venv/bin/python``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GATEWAY_SERVICE = "omniopd.v1.TeacherGateway"
HEALTH_SERVICE = "grpc.health.v1.Health"
# A draft that says what the teacher says and one that does not: the embedding metric must
# reward the first more (the verifier's model is loaded and used, not just reachable).
SCORE_GROUP = {
    "id": "smoke",
    "drafts": ["x = 4, since 2 + 2 = 4", "the weather is cold today"],
    "teacher": ["2 + 2 = 4, so x = 4", "x is 4"],
}

Result = dict[str, Any]


def passed(detail: str) -> Result:
    return {"ok": True, "detail": detail}


def failed(detail: str) -> Result:
    return {"ok": False, "detail": detail}


def run_check(results: dict[str, Result], name: str, fn: Callable[[], Result]) -> Result:
    """``fn``'s result under ``name``; an exception is a failure that names it."""
    start = time.monotonic()
    try:
        result = fn()
    except Exception as err:
        result = failed(f"{type(err).__name__}: {err}")
    result["seconds"] = round(time.monotonic() - start, 2)
    results[name] = result
    word = "pass" if result["ok"] else "FAIL"
    print(f"smoke: check {name}: {word} ({result['detail']})", file=sys.stderr, flush=True)
    return result


# -- the verifier, over HTTP ----------------------------------------------------------------


def verifier_readyz(url: str) -> Result:
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/readyz", timeout=10)
    if response.status_code != 200:
        return failed(f"GET /readyz: HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    if body.get("status") != "ready":
        return failed(f"GET /readyz: {body}")
    return passed(f"GET /readyz: HTTP 200, status ready, model {body.get('model')}")


def verifier_score(url: str) -> Result:
    from omniopd.verifier.client import VerifierClient
    from omniopd.verifier.protocol import DEFAULT_MODEL

    with VerifierClient(url) as client:
        out = client.score([SCORE_GROUP], metric="embedding")
    (group,) = out.groups
    shape = [len(row) for row in group.similarity]
    if out.model != DEFAULT_MODEL:
        return failed(f"model {out.model}, expected {DEFAULT_MODEL}")
    if group.id != "smoke" or shape != [2, 2] or len(group.reward) != 2:
        return failed(f"group {group.id}: similarity {shape}, {len(group.reward)} rewards")
    if not group.reward[0] > group.reward[1]:
        return failed(f"the matching draft was not rewarded more: rewards {group.reward}")
    rewards = ", ".join(f"{r:.3f}" for r in group.reward)
    return passed(f"POST /v1/score: metric {out.metric}, model {out.model}, rewards {rewards}")


# -- the gateway, over gRPC -----------------------------------------------------------------


def gateway_health(address: str) -> Result:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    statuses = {}
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", GATEWAY_SERVICE):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            statuses[service or "(server)"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
                reply.status
            )
    ok = all(s == "SERVING" for s in statuses.values())
    detail = ", ".join(f"{k} {v}" for k, v in statuses.items())
    return passed(detail) if ok else failed(detail)


def gateway_reflection(address: str) -> Result:
    import grpc
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        missing = {GATEWAY_SERVICE, HEALTH_SERVICE} - set(services)
        if missing:
            return failed(f"services {services}, missing {sorted(missing)}")
        service = descriptor_pool.DescriptorPool(db).FindServiceByName(GATEWAY_SERVICE)
        methods = sorted(m.name for m in service.methods)
    if "SampleChunks" not in methods:
        return failed(f"{GATEWAY_SERVICE} has methods {methods}")
    return passed(f"services {', '.join(services)}; {GATEWAY_SERVICE}: {', '.join(methods)}")


def first_prompt(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.strip():
            return json.loads(line)["prompt"]
    raise ValueError(f"{path}: no rows")


class GatewaySample:
    """One ``SampleChunks`` request sent twice: the first answer fresh, the second cached.

    A random seed makes the request one the cache cannot have seen before (the seed is part of
    the cache key), so the first answer is not cached even on a rerun against the same Redis.
    """

    def __init__(self, address: str, teacher: str, prompt: str) -> None:
        from omniopd.gateway.client import sample_request

        self.address = address
        self.teacher = teacher
        self.request = sample_request(
            teacher,
            prompt,
            n=2,
            max_tokens=16,
            temperature=1.0,
            seed=secrets.randbelow(2**31),
            request_id="smoke",
        )
        self.first: Any = None

    def send(self) -> Any:
        from omniopd.gateway.client import GatewayClient

        with GatewayClient(self.address, timeout_s=120) as client:
            reply = client.sample({"smoke": self.request})["smoke"]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def teachers(self) -> Result:
        from omniopd.gateway.client import GatewayClient

        with GatewayClient(self.address, timeout_s=30) as client:
            names = sorted(client.teachers())
        if self.teacher not in names:
            return failed(f"teachers {names}, no {self.teacher}")
        return passed(f"ListTeachers: {', '.join(names)}")

    def sample(self) -> Result:
        reply = self.send()
        self.first = reply
        texts = [c.text for c in reply.chunks]
        if len(texts) != self.request.n:
            return failed(f"{len(texts)} chunks for n={self.request.n}")
        if reply.cached:
            return failed("the first answer came from the cache")
        tokens = sum(c.output_tokens for c in reply.chunks)
        # Lengths, not the text: a random toy teacher's chunks are arbitrary characters.
        sizes = ", ".join(str(len(t)) for t in texts)
        return passed(
            f"teacher {reply.teacher}: {len(texts)} chunks, {tokens} tokens, {sizes} characters"
        )

    def cached_repeat(self) -> Result:
        if self.first is None:
            return failed("no first answer to repeat")
        reply = self.send()
        first = [c.text for c in self.first.chunks]
        again = [c.text for c in reply.chunks]
        if not reply.cached:
            return failed("the repeat was sampled again, not served from the cache")
        if again != first:
            return failed(f"the cached chunks differ: {again!r} != {first!r}")
        return passed(f"cached: true, the same {len(again)} chunks")


def services(args: argparse.Namespace) -> dict[str, Result]:
    results: dict[str, Result] = {}
    run_check(results, "verifier_readyz", lambda: verifier_readyz(args.verifier))
    run_check(results, "verifier_score", lambda: verifier_score(args.verifier))
    run_check(results, "gateway_health", lambda: gateway_health(args.gateway))
    run_check(results, "gateway_reflection", lambda: gateway_reflection(args.gateway))
    sample = GatewaySample(args.gateway, args.teacher, first_prompt(args.prompts))
    run_check(results, "gateway_teachers", sample.teachers)
    run_check(results, "gateway_sample", sample.sample)
    run_check(results, "gateway_cached_repeat", sample.cached_repeat)
    return results


# -- the trainer's run ----------------------------------------------------------------------


def train_run(run: Path, steps: int) -> Result:
    """A finished ``omniopd-train`` run of ``steps`` steps that reached the teacher."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return failed(f"no {metrics}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logged = [r.get("step") for r in rows]
    if logged != list(range(1, steps + 1)):
        return failed(f"steps logged {logged}, expected 1..{steps}")
    forks = sum(r.get("forks") or 0 for r in rows)
    failures = sum(r.get("forks_failed") or 0 for r in rows)
    tokens = sum(r.get("teacher_tokens") or 0 for r in rows)
    if forks == 0 or failures:
        return failed(f"{forks} forks, {failures} failed")
    losses = ", ".join(f"{r['loss']:.4f}" for r in rows)
    return passed(f"{steps} steps, {forks} forks, 0 failed, {tokens} teacher tokens, loss {losses}")


# -- the summary line -----------------------------------------------------------------------


def report(lines: list[str]) -> dict[str, Any]:
    """The summary: ``check`` lines become ``checks`` (name: pass/fail), ``build_s`` and
    ``image_bytes`` lines become objects by name (``image_mb`` beside the bytes), ``info``
    lines are copied as they are, and ``ok`` is true when there is at least one check and every
    check passed."""
    out: dict[str, Any] = {"ok": False}
    checks: dict[str, str] = {}
    builds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    info: dict[str, Any] = {}
    for line in lines:
        if not line.strip():
            continue
        kind, name, value = line.rstrip("\n").split("\t", 2)
        if kind == "check":
            checks[name] = value
        elif kind == "build_s":
            builds[name] = float(value)
        elif kind == "image_bytes":
            sizes[name] = int(value)
        elif kind == "info":
            info[name] = float(value) if name.endswith("_s") else value
        else:
            raise ValueError(f"unknown kind {kind!r} in {line!r}")
    out.update(info)
    out["build_s"] = builds
    out["image_bytes"] = sizes
    out["image_mb"] = {name: round(size / 1e6, 1) for name, size in sizes.items()}
    out["checks"] = checks
    out["ok"] = bool(checks) and all(v == "pass" for v in checks.values())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/smoke_checks.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("services", help="the verifier over HTTP, the gateway over gRPC")
    s.add_argument("--gateway", required=True, help="host:port")
    s.add_argument("--verifier", required=True, help="http://host:port")
    s.add_argument("--teacher", required=True, help="a teacher the gateway serves")
    s.add_argument("--prompts", type=Path, required=True, help="JSONL rows with a prompt")
    s.add_argument("--results", type=Path, help="also append each check to this results file")
    t = sub.add_parser("train", help="a finished omniopd-train run")
    t.add_argument("--run", type=Path, required=True, help="its output folder")
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--results", type=Path, help="also append the check to this results file")
    r = sub.add_parser("report", help="the summary line of a results file")
    r.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        summary = report(args.results.read_text().splitlines())
        print(json.dumps(summary, separators=(",", ":")), flush=True)
        return 0 if summary["ok"] else 1
    if args.command == "services":
        results = services(args)
    else:
        results = {}
        run_check(results, "train", lambda: train_run(args.run, args.steps))
    if args.results is not None:
        with args.results.open("a") as f:
            for name, result in results.items():
                f.write(f"check\t{name}\t{'pass' if result['ok'] else 'fail'}\n")
    print(json.dumps(results), flush=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
