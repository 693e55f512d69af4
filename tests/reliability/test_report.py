"""``tests/reliability/report.py``: the figures page is the sum of the ledger's lines, the worst
soak, and every key issue 9 names; an empty ledger is an error, not an empty page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).with_name("report.py")
KEYS = {
    "requests", "faults_injected", "recovered", "failed_alone", "lost", "fuzz_cases",
    "server_errors", "soak_p99_ms", "soak_rss_growth",
}  # fmt: skip


def line(section: str, **figures) -> str:
    base = {key: 0 for key in KEYS} | {"soak_p99_ms": None, "soak_rss_growth": None}
    return json.dumps({"test": f"t::{section}", "full": True, "section": section, "notes": {}}
                      | base | figures)  # fmt: skip


def run(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(x + "\n" for x in lines))
    return subprocess.run(
        [sys.executable, str(REPORT), str(ledger), "--docs", str(tmp_path / "docs")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sums_counts_and_keeps_the_worst_soak(tmp_path):
    done = run(tmp_path, [
        line("provider faults", requests=10, faults_injected=7, recovered=4, failed_alone=2),
        line("provider faults", requests=5, faults_injected=1, recovered=1),
        line("fuzzing", requests=1000, fuzz_cases=1000),
        line("soak", requests=300, soak_p99_ms=12.5, soak_rss_growth=0.02),
        line("soak", requests=200, soak_p99_ms=40.0, soak_rss_growth=-0.01),
    ])  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "docs" / "reliability.json").read_text())
    assert set(figures) >= KEYS
    assert figures["requests"] == 1515 and figures["faults_injected"] == 8
    assert figures["recovered"] == 5 and figures["failed_alone"] == 2 and figures["lost"] == 0
    assert figures["fuzz_cases"] == 1000 and figures["server_errors"] == 0
    assert figures["soak_p99_ms"] == 40.0 and figures["soak_rss_growth"] == 0.02
    assert figures["full_scale"] is True
    page = (tmp_path / "docs" / "reliability.md").read_text()
    assert "| lost or duplicated | 0 | 0 |" in page
    assert "'t::provider faults'" in page  # the command that reruns the section's tests


def test_an_empty_ledger_is_an_error(tmp_path):
    done = run(tmp_path, [])
    assert done.returncode != 0 and "no ledger entries" in done.stderr
    assert not (tmp_path / "docs").exists()
