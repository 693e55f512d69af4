"""``POST /v1/score`` and the operational routes, on a real server with the real MiniLM model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from omniopd.verifier.lexical import (
    chrf_matrix,
    edit_matrix,
    ngram_profile,
    rouge1_matrix,
    rouge1_tokens,
)
from omniopd.verifier.scoring import cosine_similarity, score_group

GROUPS = [
    {
        "id": "fork-a",
        "drafts": ["so x = 4", "therefore x equals 4", "the answer is 7", "x = 4"],
        "teacher": ["x = 4", "so x is 4", "we get x = 4", "hence 7", "x = 4."],
        "context": "Solve 2x = 8.",
    },
    {"id": "fork-b", "drafts": ["the cat sat on the mat"], "teacher": ["a cat is on the mat"]},
    # Texts shared with the first group are embedded once and used for both.
    {"drafts": ["x = 4", "dogs bark"], "teacher": ["so x is 4"]},
]


def reference_similarities(st_model, group, metric: str, weight: float = 0.5):
    """In-process (K, M) and (K, K) similarities, computed without the server."""
    parts = []
    if metric in ("embedding", "hybrid"):
        d = st_model.encode(group["drafts"])
        t = st_model.encode(group["teacher"])
        w = 1.0 if metric == "embedding" else weight
        parts.append((w, cosine_similarity(d, t), cosine_similarity(d, d)))
    if metric in ("lexical", "hybrid"):
        d = [ngram_profile(x, 6) for x in group["drafts"]]
        t = [ngram_profile(x, 6) for x in group["teacher"]]
        w = 1.0 if metric == "lexical" else 1.0 - weight
        parts.append((w, chrf_matrix(d, t), chrf_matrix(d, d)))
    return sum(w * km for w, km, _ in parts), sum(w * kk for w, _, kk in parts)


@pytest.mark.parametrize(
    ("metric", "prior", "reward", "posterior", "normalize"),
    [
        ("embedding", "student", "prob", "beta_binomial", False),
        ("embedding", "uniform", "logratio", "dirichlet", True),
        ("lexical", "student", "logratio", "beta_binomial", False),
        ("hybrid", "student", "prob", "dirichlet", False),
    ],
)
def test_score_equals_the_in_process_computation(
    verifier, st_model, metric, prior, reward, posterior, normalize
):
    body = {
        "groups": GROUPS,
        "metric": metric,
        "prior": prior,
        "alpha": 1.5,
        "reward": reward,
        "posterior": posterior,
        "normalize_advantage": normalize,
        "hybrid_weight": 0.7,
    }
    response = httpx.post(f"{verifier.url}/v1/score", json=body, timeout=60)
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["metric"], out["prior"], out["reward"], out["posterior"]) == (
        metric,
        prior,
        reward,
        posterior,
    )
    assert out["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [g["id"] for g in out["groups"]] == ["fork-a", "fork-b", "2"]
    distinct = {t for g in GROUPS for t in (*g["drafts"], *g["teacher"])}
    assert out["usage"]["texts"] == len(distinct)
    for group, got in zip(GROUPS, out["groups"], strict=True):
        s_km, s_kk = reference_similarities(st_model, group, metric, weight=0.7)
        want = score_group(
            s_km,
            s_kk,
            prior=prior,
            alpha=1.5,
            reward=reward,
            posterior=posterior,
            normalize_advantage=normalize,
        )
        k, m = len(group["drafts"]), len(group["teacher"])
        assert np.shape(got["similarity"]) == (k, m)
        np.testing.assert_allclose(got["similarity"], s_km, atol=1e-5)
        for field, expected in (
            ("student_agreement", want.student_agreement_K),
            ("teacher_agreement", want.teacher_agreement_K),
            ("variance", want.variance_K),
            ("reward", want.reward_K),
            ("advantage", want.advantage_K),
        ):
            assert len(got[field]) == k
            np.testing.assert_allclose(got[field], expected, atol=1e-5, err_msg=field)


def test_defaults_come_from_the_settings(start_server):
    server = start_server(alpha=3.0, prior="uniform", reward="logratio", metric="lexical")
    out = httpx.post(f"{server.url}/v1/score", json={"groups": GROUPS[1:2]}).json()
    assert (out["alpha"], out["prior"], out["reward"], out["metric"]) == (
        3.0,
        "uniform",
        "logratio",
        "lexical",
    )
    # uniform prior, K = M = 1: p_T = (s + 3·0.5) / (1 + 3); logratio against p_S = 0.5.
    s = out["groups"][0]["similarity"][0][0]
    assert out["groups"][0]["teacher_agreement"][0] == pytest.approx((s + 1.5) / 4)
    assert out["groups"][0]["reward"][0] == pytest.approx(np.log((s + 1.5) / 4 / 0.5))


@pytest.mark.parametrize("metric", ["edit", "rouge1"])
def test_likelihood_prior_gives_the_published_target(verifier, metric):
    """prior ``likelihood``, one draft per group: teacher_agreement = (k + α·π̄) / (N + α)."""
    groups = [
        {"id": "a", "drafts": ["48*2=96. 37+96=133."], "teacher": ["48*2=96. 37+96=133.",
         "48*2=96. 37+96=134.", "2*48=96."], "prior_mean": [0.25]},
        {"id": "b", "drafts": ["so x = 4"], "teacher": ["x = 4"], "prior_mean": [1.0]},
    ]  # fmt: skip
    body = {"groups": groups, "metric": metric, "prior": "likelihood", "alpha": 1.0}
    response = httpx.post(f"{verifier.url}/v1/score", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["metric"], out["prior"]) == (metric, "likelihood")
    if metric == "edit":
        similar = edit_matrix
    else:

        def similar(rows, cols):
            return rouge1_matrix([rouge1_tokens(t) for t in rows], [rouge1_tokens(t) for t in cols])

    for group, got in zip(groups, out["groups"], strict=True):
        s_km = similar(group["drafts"], group["teacher"])
        np.testing.assert_allclose(got["similarity"], s_km, atol=1e-12)
        k, n, prior = s_km.sum(), len(group["teacher"]), group["prior_mean"][0]
        assert got["teacher_agreement"] == [pytest.approx((k + prior) / (n + 1.0))]
        assert got["reward"] == got["teacher_agreement"]
        assert got["student_agreement"] == [0.5] and got["advantage"] == [0.0]  # K = 1


def test_prior_means_are_ignored_by_the_other_priors(verifier):
    body = {"groups": [{**ok_group, "prior_mean": [0.9]}], "metric": "edit", "prior": "uniform"}
    out = httpx.post(f"{verifier.url}/v1/score", json=body).json()
    assert out["groups"][0]["teacher_agreement"] == [pytest.approx((0.0 + 2.0 * 0.5) / 3.0)]


def test_repeated_texts_come_from_the_cache(verifier):
    body = {"groups": [{"drafts": ["cache me 1", "cache me 2"], "teacher": ["cache me 3"]}]}
    first = httpx.post(f"{verifier.url}/v1/score", json=body).json()
    second = httpx.post(f"{verifier.url}/v1/score", json=body).json()
    assert first["usage"] == {"texts": 3, "cache_hits": 0}
    assert second["usage"] == {"texts": 3, "cache_hits": 3}
    assert first["groups"] == second["groups"]


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if param is not None:
        assert param in error["message"]
    return error


ok_group = {"drafts": ["a"], "teacher": ["b"]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"groups": [{"drafts": [], "teacher": ["b"]}]}, "groups[0].drafts"),  # K = 0
        ({"groups": [ok_group, {"drafts": ["a"], "teacher": []}]}, "groups[1].teacher"),  # M = 0
        ({"groups": [ok_group], "alpha": 0}, "alpha"),
        ({"groups": [ok_group], "alpha": -1.0}, "alpha"),
        ({"groups": [ok_group], "metric": "bleu"}, "metric"),
        ({"groups": [ok_group], "prior": "flat"}, "prior"),
        ({"groups": [ok_group], "reward": "kl"}, "reward"),
        ({"groups": [ok_group], "posterior": "gaussian"}, "posterior"),
        ({"groups": [ok_group], "hybrid_weight": 1.5}, "hybrid_weight"),
        # Values of another JSON type than the schema's are refused, not coerced.
        ({"groups": [ok_group], "normalize_advantage": 0.0}, "normalize_advantage"),
        ({"groups": [ok_group], "normalize_advantage": "true"}, "normalize_advantage"),
        ({"groups": [ok_group], "alpha": "2"}, "alpha"),
        ({"groups": [ok_group], "hybrid_weight": "0.5"}, "hybrid_weight"),
        ({"groups": [{"drafts": ["a", ["b"]], "teacher": ["c"]}]}, "groups[0].drafts[1]"),  # ragged
        ({"groups": [{"drafts": [["a"], ["b"]], "teacher": ["c"]}]}, "groups[0].drafts[0]"),
        ({"groups": [{"drafts": ["a"], "teacher": "c"}]}, "groups[0].teacher"),
        ({"groups": []}, "groups"),
        ({}, "groups"),
        ({"groups": [ok_group], "metrik": "lexical"}, "metrik"),
        ({"groups": [{"drafts": ["a"], "teacher": ["b"], "extra": 1}]}, "groups[0].extra"),
        # prior "likelihood": one prior mean in (0, 1] per draft, required.
        ({"groups": [ok_group], "prior": "likelihood"}, "groups[0].prior_mean"),
        (
            {"groups": [ok_group, {**ok_group, "prior_mean": [0.5, 0.5]}], "prior": "likelihood"},
            "groups[0].prior_mean",
        ),
        (
            {"groups": [{**ok_group, "prior_mean": [0.5]}, {"drafts": ["a", "c"], "teacher": ["b"],
             "prior_mean": [0.5]}], "prior": "likelihood"},
            "groups[1].prior_mean",
        ),
        ({"groups": [{**ok_group, "prior_mean": [0.0]}], "prior": "likelihood"},
         "groups[0].prior_mean[0]"),
        ({"groups": [{**ok_group, "prior_mean": [1.5]}], "prior": "likelihood"},
         "groups[0].prior_mean[0]"),
        ({"groups": [{**ok_group, "prior_mean": [-0.1]}]}, "groups[0].prior_mean[0]"),
        ({"groups": [{**ok_group, "prior_mean": ["0.5"]}], "prior": "likelihood"},
         "groups[0].prior_mean[0]"),
        ({"groups": [{**ok_group, "prior_mean": 0.5}], "prior": "likelihood"},
         "groups[0].prior_mean"),
    ],
)  # fmt: skip
def test_bad_requests_get_422_naming_the_field(verifier, body, param):
    error = assert_error(httpx.post(f"{verifier.url}/v1/score", json=body), 422, param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_gets_422(verifier):
    response = httpx.post(
        f"{verifier.url}/v1/score",
        content=b'{"groups": [',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 422, "body")
    undecodable = httpx.post(
        f"{verifier.url}/v1/score",
        content=b"\xff\xfe{",
        headers={"content-type": "application/json"},
    )
    assert_error(undecodable, 422, "body")


@pytest.fixture(scope="module")
def small(start_server):
    return start_server(
        max_groups=2,
        max_texts=6,
        max_queue_texts=64,
        max_text_chars=10,
        max_request_chars=30,
        max_body_bytes=2048,
    )


@pytest.mark.parametrize(
    ("body", "param", "limit", "setting"),
    [
        ({"groups": [ok_group] * 3}, "groups", 2, "MAX_GROUPS"),
        ({"groups": [{"drafts": ["a"] * 4, "teacher": ["b"] * 3}]}, "groups", 6, "MAX_TEXTS"),
        (
            {"groups": [ok_group, {"drafts": ["a"], "teacher": ["b" * 11]}]},
            "groups[1].teacher[0]",
            10,
            "MAX_TEXT_CHARS",
        ),
        (
            {"groups": [{"drafts": ["a" * 10] * 3, "teacher": ["b"]}]},
            "groups",
            30,
            "MAX_REQUEST_CHARS",
        ),
        ({"groups": [ok_group], "pad": "x" * 4096}, "body", 2048, "MAX_BODY_BYTES"),
    ],
)
def test_too_large_requests_get_413_with_the_limit(small, body, param, limit, setting):
    error = assert_error(httpx.post(f"{small.url}/v1/score", json=body), 413, param)
    assert str(limit) in error["message"]
    assert f"OMNIOPD_VERIFIER_{setting}" in error["message"]


def test_chunked_bodies_are_held_to_the_byte_limit(small):
    """A chunked body has no Content-Length: it is counted as it arrives, refused past the limit
    (tests/reliability/test_size_caps.py shows the rest is never read) and served within it."""

    def chunks(body: dict):
        data = json.dumps(body).encode()
        yield from (data[at : at + 512] for at in range(0, len(data), 512))

    headers = {"content-type": "application/json"}
    over = {"groups": [ok_group], "pad": "x" * 4096}
    response = httpx.post(f"{small.url}/v1/score", content=chunks(over), headers=headers)
    error = assert_error(response, 413, "body")
    assert "more than 2048 bytes" in error["message"] and "MAX_BODY_BYTES" in error["message"]
    ok = chunks({"groups": [ok_group]})
    response = httpx.post(f"{small.url}/v1/score", content=ok, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("dimensions", [384.0, "384"])
def test_embeddings_dimensions_must_be_a_json_integer(verifier, dimensions):
    body = {"input": ["a"], "dimensions": dimensions}
    assert_error(httpx.post(f"{verifier.url}/v1/embeddings", json=body), 422, "dimensions")


def test_embeddings_limits_name_the_input(small):
    assert_error(httpx.post(f"{small.url}/v1/embeddings", json={"input": ["a"] * 7}), 413, "input")
    assert_error(
        httpx.post(f"{small.url}/v1/embeddings", json={"input": ["a", "b" * 11]}), 413, "input[1]"
    )


def test_unknown_routes_and_methods_use_the_envelope(verifier):
    assert_error(httpx.get(f"{verifier.url}/v2/nothing"), 404, None)
    assert_error(httpx.get(f"{verifier.url}/v1/score"), 405, None)


def test_bearer_token(start_server):
    server = start_server(token="s3cret-token")
    body = {"groups": [ok_group], "metric": "lexical"}
    missing = httpx.post(f"{server.url}/v1/score", json=body)
    assert_error(missing, 401, None)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "missing_token"
    wrong = httpx.post(
        f"{server.url}/v1/score", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.json()["error"]["code"] == "invalid_token"
    assert_error(httpx.post(f"{server.url}/v1/embeddings", json={"input": "a"}), 401, None)
    good = httpx.post(
        f"{server.url}/v1/score", json=body, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert good.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_readiness_follows_the_model_load(start_server, tmp_path):
    from omniopd.verifier.embedder import Embedder

    broken = start_server(embedder_=Embedder(str(tmp_path / "no-such-model")))
    assert httpx.get(f"{broken.url}/healthz").json() == {"status": "ok", "model": None}
    service = broken.app.state.service
    for _ in range(200):  # the failed load is quick, but runs in the background
        if service.load_error is not None:
            break
        httpx.get(f"{broken.url}/healthz")
    ready = httpx.get(f"{broken.url}/readyz")
    assert_error(ready, 503, None)
    assert "failed to load" in ready.json()["error"]["message"]
    assert ready.headers["retry-after"] == "1"
    body = {"groups": [ok_group]}
    assert_error(httpx.post(f"{broken.url}/v1/score", json=body), 503, None)
    # The lexical metric needs no model, so it still answers.
    assert httpx.post(f"{broken.url}/v1/score", json={**body, "metric": "lexical"}).is_success


def test_readyz_names_the_model(verifier):
    assert httpx.get(f"{verifier.url}/readyz").json() == {
        "status": "ready",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }


def test_metrics_cover_requests_batches_queue_and_cache(verifier):
    httpx.post(
        f"{verifier.url}/v1/score",
        json={"groups": [{"drafts": ["metrics one"], "teacher": ["metrics two"]}]},
    )
    text = httpx.get(f"{verifier.url}/metrics").text
    for name in (
        'omniopd_verifier_requests_total{route="/v1/score",status="200"}',
        'omniopd_verifier_request_seconds_bucket{le="0.005",route="/v1/score"}',
        "omniopd_verifier_batch_texts_bucket",
        "omniopd_verifier_batch_requests_bucket",
        "omniopd_verifier_queue_texts",
        "omniopd_verifier_cache_hits_total",
        "omniopd_verifier_cache_misses_total",
        "omniopd_verifier_texts_per_second",
        "omniopd_verifier_texts_embedded_total",
    ):
        assert name in text, name
    texts_per_s = next(
        line for line in text.splitlines() if line.startswith("omniopd_verifier_texts_per_second ")
    )
    assert float(texts_per_s.split()[1]) > 0
