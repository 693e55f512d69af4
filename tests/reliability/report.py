"""Turn the reliability ledger into docs/reliability.json and docs/reliability.md.

    python tests/reliability/report.py runs/reliability/ledger.jsonl --docs docs

``make reliability`` runs this after the tests; every figure comes from a ledger line that a
passing test wrote (tests/reliability/conftest.py), and the page names the command that
reproduces each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

COUNTS = ("requests", "faults_injected", "recovered", "failed_alone", "lost")
RUN_ALL = "make reliability"

# What "requests", "faults", "recovered" and "failed alone" count in each section's tests.
MEANING = {
    "provider faults": "requests: gateway requests (one stream plus unary calls) against the "
    "Anthropic and OpenAI wire-format stand-ins; faults: 429s, 5xx, slow answers, dropped "
    "connections and non-JSON bodies the stand-ins served; recovered: requests that met at "
    "least one fault and succeeded; failed alone: requests whose every attempt was faulted, "
    "answered with the last fault's status while the stream stayed open",
    "redis restart": "requests: gateway and verifier requests under load; faults: SIGKILLs of "
    "the private redis-server; recovered: requests answered while Redis was down or not yet "
    "back in use (none failed)",
    "service kills": "requests: forks the trainer sent to the teacher; faults: SIGKILLs of the "
    "gateway and the verifier; recovered: forks scored in steps that needed retries; failed "
    "alone: forks counted as failed during the outages (the steps still finished)",
    "trainer kills": "requests and faults: SIGKILLs of the trainer, each followed by --resume; "
    "recovered: resumes that got past the step their kill landed in",
    "fuzzing": "requests and fuzz cases: schemathesis calls to the verifier",
    "bad input": "requests: malformed gRPC requests (every SampleRequest field, raw bytes); "
    "failed alone: those refused with the precise status, no provider call",
    "auth": "requests: calls with missing or wrong credentials and to the open health "
    "endpoints; failed alone: those refused",
    "size caps": "requests: oversize requests; failed alone: those refused before the body "
    "was read",
    "canary": "requests: calls made while canary secrets were set; every log line, error, "
    "metric and Redis key was scanned for them",
    "soak": "requests: calls during the measured period of each soak (zero errors allowed)",
}


def rerun(test: str) -> str:
    return f"OMNIOPD_RELIABILITY=full .venv/bin/python -m pytest '{test}'"


def load(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit(f"{path} holds no ledger entries: did any reliability test pass?")
    return rows


def totals(rows: list[dict]) -> dict:
    soaks = [r for r in rows if r["soak_p99_ms"] is not None]
    return {
        **{key: sum(r[key] for r in rows) for key in COUNTS},
        "fuzz_cases": sum(r["fuzz_cases"] for r in rows),
        "server_errors": sum(r["server_errors"] for r in rows),
        # The worst soak: p99 and memory growth are limits, so the page reports the maximum.
        "soak_p99_ms": max((r["soak_p99_ms"] for r in soaks), default=None),
        "soak_rss_growth": max(
            (r["soak_rss_growth"] for r in soaks if r["soak_rss_growth"] is not None),
            default=None,
        ),
    }


def sections(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {key: 0 for key in COUNTS} | {"tests": []})
    for r in rows:
        s = out[r["section"]]
        for key in (*COUNTS, "fuzz_cases", "server_errors"):
            s[key] = s.get(key, 0) + r[key]
        if r["test"] not in s["tests"]:
            s["tests"].append(r["test"])
    return dict(out)


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if unit == "%":
            return f"{100 * value:+.1f} %"
        return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"
    return f"{value:,}{unit}"


def markdown(rows: list[dict], summary: dict) -> str:
    full = all(r["full"] for r in rows)
    lines = [
        "# Reliability figures",
        "",
        f"Written by `{RUN_ALL}` ({'full scale' if full else 'BOUNDED scale, not the full run'})"
        f" on {summary['machine']}, {summary['date']}. Every figure comes from a test that "
        "passed; a row's command reruns its tests alone.",
        "",
        "| figure | value | must be |",
        "| --- | --- | --- |",
        f"| faults injected | {fmt(summary['faults_injected'])} | |",
        f"| requests sent | {fmt(summary['requests'])} | |",
        f"| recovered (hit a fault, then succeeded) | {fmt(summary['recovered'])} | |",
        f"| failed alone (precise status, others unaffected) | {fmt(summary['failed_alone'])} | |",
        f"| lost or duplicated | {fmt(summary['lost'])} | 0 |",
        f"| fuzz cases run | {fmt(summary['fuzz_cases'])} | ≥ 1,000 |",
        f"| 5xx seen | {fmt(summary['server_errors'])} | 0 |",
        f"| soak p99 latency (worst soak) | {fmt(summary['soak_p99_ms'], ' ms')} | |",
        f"| soak resident-memory growth (worst) | {fmt(summary['soak_rss_growth'], '%')} | < 10 % |",
        "",
        "## By section",
        "",
        "| section | requests | faults | recovered | failed alone | lost | fuzz cases | 5xx |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary["sections"].items():
        lines.append(
            f"| {name} | {fmt(s['requests'])} | {fmt(s['faults_injected'])} | "
            f"{fmt(s['recovered'])} | {fmt(s['failed_alone'])} | {fmt(s['lost'])} | "
            f"{fmt(s['fuzz_cases'])} | {fmt(s['server_errors'])} |"
        )
    soaks = [r for r in rows if r["soak_p99_ms"] is not None]
    if soaks:
        lines += [
            "",
            "## Soaks",
            "",
            "| soak | clients | seconds | requests | errors | p50 ms | p99 ms | RSS growth |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in soaks:
            n = r["notes"]
            lines.append(
                f"| {n.get('name', r['section'])} | {n.get('clients', '–')} | "
                f"{fmt(n.get('seconds'))} | {fmt(r['requests'])} | {fmt(n.get('errors'))} | "
                f"{fmt(n.get('p50_ms'))} | {fmt(r['soak_p99_ms'])} | "
                f"{fmt(r['soak_rss_growth'], '%')} |"
            )
    lines += ["", "## What each section counts", ""]
    lines += [
        f"- **{name}**: {MEANING.get(name, 'see its tests')}." for name in summary["sections"]
    ]
    lines += ["", "## Commands", "", f"Everything: `{RUN_ALL}`. One section's tests:", ""]
    for name, s in summary["sections"].items():
        lines.append(f"- {name}:")
        lines += [f"  - `{rerun(test)}`" for test in s["tests"]]
    notes = [(r["test"], r["notes"]) for r in rows if r["notes"] and r["soak_p99_ms"] is None]
    if notes:
        lines += ["", "## Details", ""]
        lines += [f"- `{test}`: {json.dumps(n, sort_keys=True)}" for test, n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ledger", type=Path)
    p.add_argument("--docs", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    rows = load(args.ledger)
    summary = {
        **totals(rows),
        "full_scale": all(r["full"] for r in rows),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPUs",
        "command": RUN_ALL,
        "sections": sections(rows),
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "reliability.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.docs / "reliability.md").write_text(markdown(rows, summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "sections"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
