"""schemathesis against the real verifier's ``/openapi.json``: ``scale.fuzz_cases`` generated
requests (1,000 in ``make reliability``), valid and invalid, over every operation the API
describes, each answer put through every check schemathesis has for a single call: no 5xx;
status, content type, headers and body as the schema says; invalid data refused; auth not
ignored (the request is sent again without the token and must get 401); required headers;
unsupported methods answered 405 with ``Allow``.

One check is left out: ``positive_data_acceptance``, which wants every schema-valid request
accepted. The server refuses some with reasons the static schema cannot state (the limits it
was started with: 413; a ``dimensions`` other than the loaded model's: 422), as docs/verifier.md
documents; ``response_schema_conformance`` still checks those answers against the schema.

tests/verifier/test_openapi_fuzz.py fuzzes the scoring and embedding operations with the
response checks on every ``make test``; this test uses the same server settings, another seed
(``OMNIOPD_FUZZ_SEED``, default 9), every operation and check, and the reliability scale.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.verifier.test_openapi_fuzz import AUTH, CONFIG, SETTINGS

from .abuse import verifier_server

SEED = int(os.environ.get("OMNIOPD_FUZZ_SEED", "9"))
# Shares of the cases per generation mode, for operations that take input.
SHARES = {GenerationMode.POSITIVE: 0.6, GenerationMode.NEGATIVE: 0.4}
EXCLUDED = [positive_data_acceptance]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def verifier():
    with verifier_server(**SETTINGS) as server:
        yield server


def takes_input(operation) -> bool:
    """Whether requests to ``operation`` carry anything to fuzz (a body or parameters)."""
    return any(len(part) for part in (operation.body, operation.query, operation.path_parameters))


def fuzz(operation, mode: GenerationMode, examples: int, run_seed: int, statuses: Counter) -> None:
    """Up to ``examples`` generated requests to ``operation``, each answer checked; every
    status seen is counted (5xx too, before the checks fail the test on it)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @seed(run_seed)
    @given(case=operation.as_strategy(generation_mode=mode, headers=AUTH))
    def run(case) -> None:
        response = case.call(timeout=60)
        statuses[(operation.method.upper(), operation.path, mode.value, response.status_code)] += 1
        case.validate_response(response, excluded_checks=EXCLUDED, headers=AUTH)

    run()


def test_generated_requests_never_get_5xx_and_match_the_schema(verifier, scale, ledger):
    schema = schemathesis.openapi.from_url(f"{verifier.url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    with_input = [op for op in operations if takes_input(op)]
    assert {op.path for op in with_input} >= {"/v1/score", "/v1/embeddings"}
    statuses: Counter[tuple[str, str, str, int]] = Counter()
    for op in operations:
        if not takes_input(op):
            fuzz(op, GenerationMode.POSITIVE, 5, SEED, statuses)  # one distinct request
    per_operation = scale.fuzz_cases / len(with_input)
    rounds = 0
    while (total := sum(statuses.values())) < scale.fuzz_cases:
        # Another round (another seed) if the generators ran dry before the target.
        assert rounds < 5, f"only {total} cases after {rounds} rounds: {dict(statuses)}"
        for op in with_input:
            for mode, share in SHARES.items():
                fuzz(op, mode, max(1, round(per_operation * share)), SEED + rounds, statuses)
        per_operation = (scale.fuzz_cases - sum(statuses.values())) / len(with_input) + 1
        rounds += 1

    total = sum(statuses.values())
    server_errors = sum(n for (*_, status), n in statuses.items() if status >= 500)
    ledger.add(
        "fuzzing",
        requests=total,
        fuzz_cases=total,
        server_errors=server_errors,
        notes={
            "seed": SEED,
            "rounds": rounds,
            "statuses": {" ".join(map(str, k)): n for k, n in sorted(statuses.items())},
        },
    )
    assert total >= scale.fuzz_cases and server_errors == 0
    # Every operation was reached, and the fuzzing got through to the real work.
    assert {(m, p) for m, p, *_ in statuses} == {(op.method.upper(), op.path) for op in operations}
    for path in ("/v1/score", "/v1/embeddings"):
        served = sum(n for (_, p, _, s), n in statuses.items() if p == path and s == 200)
        assert served >= 3, (path, dict(statuses))
    print(f"{total} generated requests (seed {SEED}):", dict(sorted(statuses.items())))
