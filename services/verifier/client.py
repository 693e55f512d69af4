"""Typed clients of the verifier (sync and async, on httpx), for any trainer or reward function.

Needs only httpx and pydantic: importing this module loads neither torch nor FastAPI.

    from omniopd.verifier.client import VerifierClient

    with VerifierClient("http://127.0.0.1:8100") as verifier:
        out = verifier.score([{"drafts": ["x = 4", "x = 5"], "teacher": ["x is 4", "4"]}])
        out.groups[0].advantage        # one value per draft

Requests answered 429 or 503 (queue full, model loading) are retried, waiting what the server's
``Retry-After`` asks (else exponential backoff with jitter), at most ``max_retries`` times; so is
a refused connection. Any other non-2xx answer raises :class:`VerifierHTTPError` at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import ValidationError

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

__all__ = ["AsyncVerifierClient", "Group", "ScoreResponse", "VerifierClient", "VerifierHTTPError"]

RETRY_STATUSES = frozenset({429, 503})
DEFAULT_TIMEOUT_S = 120.0
MAX_RETRY_WAIT_S = 30.0

GroupLike = Group | Mapping[str, Any]


class VerifierHTTPError(Exception):
    """A non-2xx answer; ``error`` is the server's envelope when it sent one."""

    def __init__(self, status: int, error: ErrorDetail | None, body: str) -> None:
        detail = f"{error.message} (param {error.param})" if error and error.param else None
        super().__init__(
            f"verifier answered {status}: {detail or (error and error.message) or body[:500]}"
        )
        self.status = status
        self.error = error


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


def retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` when given (seconds
    or an HTTP date), else ``backoff_s * 2**attempt`` with full jitter; at most 30 s."""
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(MAX_RETRY_WAIT_S, max(0.0, float(header)))
        except ValueError:
            try:
                when = parsedate_to_datetime(header).timestamp()
                return min(MAX_RETRY_WAIT_S, max(0.0, when - time.time()))
            except (TypeError, ValueError):
                pass
    return min(MAX_RETRY_WAIT_S, random.uniform(0, backoff_s * 2**attempt))


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        error = None
    raise VerifierHTTPError(response.status_code, error, response.text)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class VerifierClient:
    """Blocking client; one connection pool, safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._http.post(path, json=body)
            except httpx.ConnectError:
                if attempt == self.max_retries:
                    raise
            if response is not None and (
                response.status_code not in RETRY_STATUSES or attempt == self.max_retries
            ):
                raise_for_error(response)
                return response
            time.sleep(retry_delay(response, attempt, self.backoff_s))
        raise AssertionError("unreachable")

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


class AsyncVerifierClient:
    """asyncio client; many ``score`` calls may be in flight at once on one instance."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_connections: int = 100,
    ) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        limits = httpx.Limits(max_connections=max_connections)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(token), timeout=timeout, limits=limits
        )

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = await self._http.post(path, json=body)
            except httpx.ConnectError:
                if attempt == self.max_retries:
                    raise
            if response is not None and (
                response.status_code not in RETRY_STATUSES or attempt == self.max_retries
            ):
                raise_for_error(response)
                return response
            await asyncio.sleep(retry_delay(response, attempt, self.backoff_s))
        raise AssertionError("unreachable")

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
