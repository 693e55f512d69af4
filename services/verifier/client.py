"""Typed clients of the verifier (sync and async, on httpx), for any trainer or reward function.

Needs only httpx and pydantic: importing this module loads neither torch nor FastAPI.

    from omniopd.verifier.client import VerifierClient

    with VerifierClient("http://127.0.0.1:8100") as verifier:
        out = verifier.score([{"drafts": ["x = 4", "x = 5"], "teacher": ["x is 4", "4"]}])
        out.groups[0].advantage        # one value per draft

Requests answered 429, 500, 502, 503 or 504 (queue full, model loading, a proxy between) are
retried, waiting what the server's ``Retry-After`` asks (else exponential backoff with jitter),
at most ``max_retries`` times; so is a connection that failed or dropped. That is the project's
one retry policy (``omniopd/retry.py``); ``policy=`` sets it whole, ``on_retry=`` sees each
retry, and :meth:`AsyncVerifierClient.with_options` gives a client with other settings on the
same connections. Any other non-2xx answer raises :class:`VerifierHTTPError` at once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Self

import httpx
from pydantic import ValidationError

from omniopd.retry import (
    RETRYABLE_HTTP_STATUSES,
    OnRetry,
    RetryPolicy,
    async_retrying,
    retry_after_s,
    retrying,
)
from omniopd.verifier.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorDetail,
    ErrorResponse,
    Group,
    Metric,
    Posterior,
    Prior,
    Reward,
    ScoreRequest,
    ScoreResponse,
)

__all__ = [
    "AsyncVerifierClient",
    "Group",
    "Metric",
    "Prior",
    "Reward",
    "ScoreResponse",
    "VerifierClient",
    "VerifierHTTPError",
]

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_POLICY = RetryPolicy(max_retries=3, backoff_s=0.5)

GroupLike = Group | Mapping[str, Any]


class VerifierHTTPError(Exception):
    """A non-2xx answer; ``error`` is the server's envelope when it sent one."""

    def __init__(
        self,
        status: int,
        error: ErrorDetail | None,
        body: str,
        retry_after_s: float | None = None,
    ) -> None:
        detail = f"{error.message} (param {error.param})" if error and error.param else None
        super().__init__(
            f"verifier answered {status}: {detail or (error and error.message) or body[:500]}"
        )
        self.status = status
        self.error = error
        self.retry_after_s = retry_after_s  # the answer's Retry-After, in seconds


def score_payload(
    groups: Sequence[GroupLike],
    *,
    metric: Metric | None = None,
    prior: Prior | None = None,
    alpha: float | None = None,
    reward: Reward | None = None,
    normalize_advantage: bool | None = None,
    posterior: Posterior | None = None,
    hybrid_weight: float | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/score``, validated here so mistakes fail before the network."""
    request = ScoreRequest(
        groups=[g if isinstance(g, Group) else Group.model_validate(g) for g in groups],
        metric=metric,
        prior=prior,
        alpha=alpha,
        reward=reward,
        normalize_advantage=normalize_advantage,
        posterior=posterior,
        hybrid_weight=hybrid_weight,
    )
    return request.model_dump(mode="json", exclude_none=True)


def embed_payload(texts: Sequence[str] | str) -> dict[str, Any]:
    body = EmbeddingRequest(input=texts if isinstance(texts, str) else list(texts))
    return body.model_dump(mode="json", exclude_none=True)


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        error = None
    raise VerifierHTTPError(
        response.status_code,
        error,
        response.text,
        retry_after_s(response.headers.get("retry-after")),
    )


def retryable(err: BaseException) -> bool:
    """A connection that failed or dropped, or an answer that means "later"."""
    if isinstance(err, VerifierHTTPError):
        return err.status in RETRYABLE_HTTP_STATUSES
    return isinstance(err, httpx.TransportError)


def _hint(err: BaseException) -> float | None:
    return err.retry_after_s if isinstance(err, VerifierHTTPError) else None


def _policy(policy: RetryPolicy | None, max_retries: int | None, backoff_s: float | None):
    policy = policy or DEFAULT_POLICY
    if max_retries is not None:
        policy = RetryPolicy(max_retries, policy.backoff_s, policy.max_delay_s)
    if backoff_s is not None:
        policy = RetryPolicy(policy.max_retries, backoff_s, policy.max_delay_s)
    return policy


class _Options:
    """What both clients share: the retry policy and the hook, replaceable per use."""

    policy: RetryPolicy
    on_retry: OnRetry | None

    def with_options(
        self, *, policy: RetryPolicy | None = None, on_retry: OnRetry | None = None
    ) -> Self:
        """A client on the same connections with another retry policy or hook."""
        other = copy.copy(self)
        other.policy = policy or self.policy
        other.on_retry = on_retry if on_retry is not None else self.on_retry
        return other

    @property
    def max_retries(self) -> int:
        return self.policy.max_retries


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class VerifierClient(_Options):
    """Blocking client; one connection pool, safe to share between threads.

    ``max_retries`` and ``backoff_s`` override those of ``policy`` (default: 3 retries,
    0.5 s backoff)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        *,
        policy: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.policy = _policy(policy, max_retries, backoff_s)
        self.on_retry = on_retry
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in retrying(
            self.policy, retryable=retryable, hint=_hint, on_retry=self.on_retry
        ):
            with attempt:
                response = self._http.post(path, json=body)
                raise_for_error(response)
        return response

    def score(
        self,
        groups: Sequence[GroupLike],
        metric: Metric | None = None,
        prior: Prior | None = None,
        alpha: float | None = None,
        reward: Reward | None = None,
        *,
        normalize_advantage: bool | None = None,
        posterior: Posterior | None = None,
        hybrid_weight: float | None = None,
    ) -> ScoreResponse:
        """Score every group (K drafts and M teacher chunks each; a dict or a :class:`Group`).
        Parameters left out take the server's defaults. Groups come back in order."""
        body = score_payload(
            groups,
            metric=metric,
            prior=prior,
            alpha=alpha,
            reward=reward,
            normalize_advantage=normalize_advantage,
            posterior=posterior,
            hybrid_weight=hybrid_weight,
        )
        response = self._post("/v1/score", body)
        return ScoreResponse.model_validate_json(response.content)

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        """One embedding per text, in order."""
        response = self._post("/v1/embeddings", embed_payload(texts))
        data = EmbeddingResponse.model_validate_json(response.content).data
        return [d.embedding for d in sorted(data, key=lambda d: d.index)]  # type: ignore[misc]

    def ready(self) -> bool:
        return self._http.get("/readyz").is_success

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VerifierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncVerifierClient(_Options):
    """asyncio client; many ``score`` calls may be in flight at once on one instance."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        max_connections: int = 100,
        *,
        policy: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.policy = _policy(policy, max_retries, backoff_s)
        self.on_retry = on_retry
        limits = httpx.Limits(max_connections=max_connections)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(token), timeout=timeout, limits=limits
        )

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        async for attempt in async_retrying(
            self.policy, retryable=retryable, hint=_hint, on_retry=self.on_retry
        ):
            with attempt:
                response = await self._http.post(path, json=body)
                raise_for_error(response)
        return response

    async def score(
        self,
        groups: Sequence[GroupLike],
        metric: Metric | None = None,
        prior: Prior | None = None,
        alpha: float | None = None,
        reward: Reward | None = None,
        *,
        normalize_advantage: bool | None = None,
        posterior: Posterior | None = None,
        hybrid_weight: float | None = None,
    ) -> ScoreResponse:
        """As :meth:`VerifierClient.score`."""
        body = score_payload(
            groups,
            metric=metric,
            prior=prior,
            alpha=alpha,
            reward=reward,
            normalize_advantage=normalize_advantage,
            posterior=posterior,
            hybrid_weight=hybrid_weight,
        )
        response = await self._post("/v1/score", body)
        return ScoreResponse.model_validate_json(response.content)

    async def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        response = await self._post("/v1/embeddings", embed_payload(texts))
        data = EmbeddingResponse.model_validate_json(response.content).data
        return [d.embedding for d in sorted(data, key=lambda d: d.index)]  # type: ignore[misc]

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).is_success

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVerifierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
