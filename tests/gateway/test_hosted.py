"""What the hosted providers share (``providers/hosted.py``, ``http_errors.py``, ``fanout.py``): retry-after parsing, the
classification of HTTP statuses and of both SDKs' exceptions, token shares, request bodies,
keys. Pure functions, checked by example and by property; the SDK exceptions are built the way
the SDKs build them, from an HTTP response."""

from __future__ import annotations

import email.utils

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniopd.gateway.providers import ErrorKind, ProviderError
from omniopd.gateway.providers.hosted import read_api_key, request_body, split_count
from omniopd.gateway.providers.http_errors import (
    classify_status,
    error_text,
    parse_retry_after,
    sdk_error,
    worst_error,
)
from omniopd.log import register_secret


def test_retry_after_headers():
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(30)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, ErrorKind.RATE_LIMITED),
        (408, ErrorKind.TIMEOUT),
        (409, ErrorKind.UNAVAILABLE),
        (500, ErrorKind.UNAVAILABLE),
        (502, ErrorKind.UNAVAILABLE),
        (529, ErrorKind.UNAVAILABLE),
        (401, ErrorKind.AUTH),
        (403, ErrorKind.AUTH),
        (400, ErrorKind.BAD_REQUEST),
        (404, ErrorKind.BAD_REQUEST),
        (422, ErrorKind.BAD_REQUEST),
    ],
)
def test_status_classes(status, kind):
    assert classify_status(status) is kind


def test_a_refused_prefill_is_its_own_kind_but_only_for_a_client_error():
    assert classify_status(400, prefill_refused=True) is ErrorKind.PREFILL_UNSUPPORTED
    assert classify_status(503, prefill_refused=True) is ErrorKind.UNAVAILABLE


def test_the_error_reported_for_several_failed_calls():
    slow = ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=9)
    fast = ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=1)
    down = ProviderError(ErrorKind.UNAVAILABLE, "503")
    auth = ProviderError(ErrorKind.AUTH, "401")
    assert worst_error([]) is None
    assert worst_error([fast, down, slow]) is slow  # wait as long as the slowest asks
    assert worst_error([fast, auth, slow]) is auth  # retrying cannot help


def test_error_text_reads_both_envelopes():
    assert error_text({"type": "error", "error": {"message": "bad"}}, "x") == "bad"
    assert error_text({"detail": "nope"}, "x") == "nope"
    assert error_text({"error": "plain"}, "x") == "plain"
    assert error_text(None, "fallback") == "fallback"


@given(total=st.integers(0, 10_000), weights=st.lists(st.integers(0, 500), min_size=1, max_size=9))
def test_split_count_sums_and_stays_proportional(total, weights):
    parts = split_count(total, weights)
    assert sum(parts) == total and len(parts) == len(weights)
    wsum = sum(weights) or len(weights)
    for part, w in zip(parts, weights if sum(weights) else [1] * len(weights), strict=True):
        assert abs(part - total * w / wsum) < 1


def test_options_become_body_fields_and_ours_win():
    options = {"metadata": {"user_id": "u"}, "extra_body": {"top_k": 20, "temperature": 9}}
    out = request_body(options, model="m", temperature=0.5)
    assert out == {"metadata": {"user_id": "u"}, "top_k": 20, "temperature": 0.5, "model": "m"}
    assert options["extra_body"] == {"top_k": 20, "temperature": 9}  # not mutated


def test_api_key_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test-abcdef")
    assert read_api_key("t", "MY_TEACHER_KEY", "OTHER") == "sk-test-abcdef"
    # A self-hosted endpoint without api_key_env gets no key (none leaks to another server).
    assert read_api_key("t", None, None) is None
    monkeypatch.delenv("MY_TEACHER_KEY")
    with pytest.raises(RuntimeError, match="MY_TEACHER_KEY is not set"):
        read_api_key("t", "MY_TEACHER_KEY", None)


def _response(status: int, body: dict, headers: dict[str, str] | None = None) -> httpx2.Response:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/messages")
    return httpx2.Response(status, json=body, headers=headers or {}, request=request)


@pytest.mark.parametrize("sdk", [anthropic, openai], ids=["anthropic", "openai"])
def test_sdk_status_errors(sdk):
    def status_error(cls, status, message, headers=None):
        body = {"type": "error", "error": {"type": "x", "message": message}}
        return cls(message, response=_response(status, body, headers), body=body)

    limited = sdk_error(
        status_error(sdk.RateLimitError, 429, "slow down", {"retry-after": "4"}), where="w"
    )
    assert limited.kind is ErrorKind.RATE_LIMITED and limited.retry_after == 4.0
    assert limited.status == 429 and limited.message == "w: HTTP 429: slow down"
    down = sdk_error(status_error(sdk.InternalServerError, 503, "busy"), where="w")
    assert down.kind is ErrorKind.UNAVAILABLE and down.retryable
    auth = sdk_error(status_error(sdk.AuthenticationError, 401, "bad key"), where="w")
    assert auth.kind is ErrorKind.AUTH and not auth.retryable
    refused = status_error(sdk.BadRequestError, 400, "This model does not support prefill.")
    assert sdk_error(refused, where="w").kind is ErrorKind.BAD_REQUEST  # not asked to look
    assert (
        sdk_error(refused, where="w", prefill_markers=("prefill",)).kind
        is ErrorKind.PREFILL_UNSUPPORTED
    )


@pytest.mark.parametrize("sdk", [anthropic, openai], ids=["anthropic", "openai"])
def test_sdk_timeouts_and_connection_errors(sdk):
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/x")
    timeout = sdk_error(sdk.APITimeoutError(request=request), where="w")
    assert timeout.kind is ErrorKind.TIMEOUT and timeout.retryable
    try:
        raise sdk.APIConnectionError(request=request) from ConnectionRefusedError("refused")
    except sdk.APIConnectionError as err:
        refused = sdk_error(err, where="w")
    assert refused.kind is ErrorKind.UNAVAILABLE and "ConnectionRefusedError" in refused.message
    assert sdk_error(ValueError("not an SDK error"), where="w") is None


def test_error_messages_are_redacted_and_bounded():
    secret = "sk-hosted-canary-5be0c1d2"
    register_secret(secret)
    body = {"error": {"message": f"key {secret} is invalid " + "x" * 1000}}
    err = openai.AuthenticationError("401", response=_response(401, body), body=body)
    mapped = sdk_error(err, where="w")
    assert secret not in mapped.message and "[REDACTED]" in mapped.message
    assert len(mapped.message) <= 300
