"""Shared by the reliability tests: how hard to push (bounded in ``make test``, full in
``make reliability``) and a ledger of what each test sent, broke and saw.

``OMNIOPD_RELIABILITY=full`` selects the full scale (1,000 fuzz cases, 64 clients for 120 s,
three trainer kills); anything else, or unset, the bounded one that ``make test`` runs.
``OMNIOPD_RELIABILITY_LEDGER=PATH`` appends one JSON line per ledger entry to PATH;
``tests/reliability/report.py`` turns those lines into docs/reliability.json and .md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("OMNIOPD_RELIABILITY", "").lower() == "full"


@dataclass(frozen=True)
class Scale:
    """How hard each test pushes; the full scale is issue 9's, the bounded one fits CI."""

    full: bool
    fuzz_cases: int  # schemathesis cases against the verifier's OpenAPI
    soak_clients: int  # concurrent clients per soak
    soak_s: float  # seconds each soak runs after its warm-up
    soak_warmup_s: float
    trainer_kills: int  # SIGKILLs of one trainer run before it is resumed to the end


SCALE = (
    Scale(True, fuzz_cases=1000, soak_clients=64, soak_s=120.0, soak_warmup_s=15.0, trainer_kills=3)
    if FULL
    else Scale(
        False, fuzz_cases=150, soak_clients=16, soak_s=4.0, soak_warmup_s=2.0, trainer_kills=1
    )
)


@pytest.fixture(scope="session")
def scale() -> Scale:
    return SCALE


# The figures of docs/reliability.json; every ledger entry has each key (None where it does
# not apply), plus ``test`` (the pytest node id), ``section`` and free-form ``notes``.
COUNTS = ("requests", "faults_injected", "recovered", "failed_alone", "lost")
FIGURES = (*COUNTS, "fuzz_cases", "server_errors", "soak_p99_ms", "soak_rss_growth")


@dataclass
class Entry:
    section: str
    requests: int = 0
    faults_injected: int = 0
    recovered: int = 0
    failed_alone: int = 0
    lost: int = 0
    fuzz_cases: int = 0
    server_errors: int = 0
    soak_p99_ms: float | None = None
    soak_rss_growth: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """What one test recorded; written to the ledger file (if any) when the test passes.

    A test that fails writes nothing: the figures page only reports runs whose assertions held.
    """

    def __init__(self, test: str) -> None:
        self.test = test
        self.entries: list[Entry] = []

    def add(self, section: str, **figures: Any) -> Entry:
        entry = Entry(section, **figures)
        self.entries.append(entry)
        return entry

    def lines(self) -> list[str]:
        return [
            json.dumps({"test": self.test, "full": FULL, **vars(entry)}, sort_keys=True)
            for entry in self.entries
        ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_PASSED] = report.passed


_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def ledger(request: pytest.FixtureRequest):
    book = Ledger(request.node.nodeid)
    yield book
    path = os.environ.get("OMNIOPD_RELIABILITY_LEDGER")
    if path and request.node.stash.get(_PASSED, False):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            for line in book.lines():
                out.write(line + "\n")
