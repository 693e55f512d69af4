"""schemathesis against the real server's ``/openapi.json``: at least 200 generated requests,
valid and invalid, none answered 5xx, every answer matching the schema (status, content type,
headers, body).

The server has a bearer token and its limits are small here so generated requests stay cheap to embed; requests past
them must come back as the 413 the schema declares.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MIN_CASES = 200
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# An invalid body may also be over the server's size limits, and 413 is how the API declares it
# refuses those: for invalid data it is a rejection like 422 (schemathesis' default list of
# rejection statuses lacks it).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
)
# (path, method, generation mode, max examples)
PLAN = [
    ("/v1/score", "POST", GenerationMode.POSITIVE, 120),
    ("/v1/score", "POST", GenerationMode.NEGATIVE, 50),
    ("/v1/embeddings", "POST", GenerationMode.POSITIVE, 40),
    ("/v1/embeddings", "POST", GenerationMode.NEGATIVE, 30),
    ("/healthz", "GET", GenerationMode.POSITIVE, 5),
    ("/readyz", "GET", GenerationMode.POSITIVE, 5),
    ("/metrics", "GET", GenerationMode.POSITIVE, 5),
]


# Also the server of tests/reliability/test_fuzz.py, which fuzzes every operation at scale.
SETTINGS = {
    "token": TOKEN,
    "max_groups": 4,
    "max_texts": 16,
    "max_queue_texts": 256,
    "max_text_chars": 64,
    "max_request_chars": 512,
    "max_body_bytes": 32_768,
}


@pytest.fixture(scope="module")
def fuzz_server(start_server):
    return start_server(**SETTINGS)


def fuzz(operation, mode: GenerationMode, max_examples: int, statuses: Counter) -> None:
    """Send up to ``max_examples`` generated requests to ``operation`` and check each answer."""
    checks = (
        [*CONFORMANCE, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CONFORMANCE
    )

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    # With the valid token fixed, invalid cases are invalid in their body, not in their auth
    # (which tests/verifier/test_api.py covers), and reach the validation layer.
    @given(case=operation.as_strategy(generation_mode=mode, headers=AUTH))
    def run(case) -> None:
        response = case.call_and_validate(checks=checks, timeout=60)
        statuses[(operation.path, mode.value, response.status_code)] += 1

    run()


@pytest.mark.slow
def test_generated_requests_never_5xx_and_match_the_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=CONFIG)
    statuses: Counter[tuple[str, str, int]] = Counter()
    for path, method, mode, max_examples in PLAN:
        fuzz(schema[path][method], mode, max_examples, statuses)

    total = sum(statuses.values())
    assert total >= MIN_CASES, f"only {total} generated requests: {dict(statuses)}"
    assert not any(status >= 500 for _, _, status in statuses)
    # The fuzzing reached the real work, not only the validation layer.
    scored = sum(n for (p, _, s), n in statuses.items() if p == "/v1/score" and s == 200)
    embedded = sum(n for (p, _, s), n in statuses.items() if p == "/v1/embeddings" and s == 200)
    assert scored >= 20 and embedded >= 5, dict(statuses)
    print(f"{total} generated requests:", dict(sorted(statuses.items())))
