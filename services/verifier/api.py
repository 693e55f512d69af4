"""The HTTP layer: a thin router over :class:`VerifierService`, one error envelope for everything.

Routes live at module level; :func:`build_app` only assembles them with a service instance.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from omniopd.verifier.errors import VerifierError, param_path
from omniopd.verifier.middleware import BodyLimitMiddleware, MetricsMiddleware
from omniopd.verifier.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    Health,
    ScoreRequest,
    ScoreResponse,
)
from omniopd.verifier.serving import VerifierService

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_ERRORS_SHOWN = 3


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


def get_service(request: Request) -> VerifierService:
    return request.app.state.service


ServiceDep = Annotated[VerifierService, Depends(get_service)]
_bearer = HTTPBearer(auto_error=False, description="needed when the server has a token")


def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the server's bearer token (when it has one)."""
    expected = service.settings.token
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise VerifierError(
            401,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            type="authentication_error",
            code="invalid_token" if given else "missing_token",
        )


router = APIRouter()


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    responses=_errors(401, 413, 422, 429, 503),
    dependencies=[Depends(require_token)],
    summary="Score K drafts against M teacher chunks, for many groups at once",
)
async def score(body: ScoreRequest, service: ServiceDep) -> ScoreResponse:
    return await service.score(body)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=_errors(401, 404, 413, 422, 429, 503),
    dependencies=[Depends(require_token)],
    summary="OpenAI-compatible embeddings",
)
async def embeddings(body: EmbeddingRequest, service: ServiceDep) -> EmbeddingResponse:
    return await service.embeddings(body)


@router.get("/healthz", response_model=Health, summary="Alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses=_errors(503), summary="Model loaded and warmed"
)
async def readyz(service: ServiceDep) -> Health:
    service.readiness()
    return Health(status="ready", model=service.model_name)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def metrics(service: ServiceDep) -> PlainTextResponse:
    return PlainTextResponse(service.metrics.render(), media_type=PROMETHEUS_TEXT)


def _envelope(err: VerifierError) -> JSONResponse:
    return JSONResponse(err.envelope().model_dump(), status_code=err.status, headers=err.headers())


async def on_verifier_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VerifierError)
    return _envelope(exc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the first bad field (``groups[0].drafts``) and what it must be."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return _envelope(VerifierError(422, "the request is not valid", code="invalid_request"))
    first = errors[0]
    if first.get("type") == "json_invalid":
        # loc is ("body", <character offset>) here, not a field.
        where = first.get("loc", ())[-1:]
        message = (
            f"body: not valid JSON ({first.get('msg')}, at character {where[0] if where else '?'})"
        )
        return _envelope(VerifierError(422, message, param="body", code="json_invalid"))
    shown = [f"{param_path(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    message = "; ".join(shown[:MAX_ERRORS_SHOWN])
    if len(shown) > MAX_ERRORS_SHOWN:
        message += f" (and {len(shown) - MAX_ERRORS_SHOWN} more)"
    return _envelope(
        VerifierError(
            422, message, param=param_path(first.get("loc", ())), code=str(first.get("type"))
        )
    )


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): a wrong shape like any
        # other, so 422 as the API promises.
        message = f"body: could not be read as JSON ({exc.detail})"
        return _envelope(VerifierError(422, message, param="body", code="json_invalid"))
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    err = VerifierError(exc.status_code, str(exc.detail), type=kind, code=kind)
    response = _envelope(err)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _envelope(
        VerifierError(500, "internal error; see the server log", type="server_error", code=None)
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: VerifierService = app.state.service
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def build_app(service: VerifierService) -> FastAPI:
    """The ASGI app serving ``service``; the service starts and stops with the app."""
    app = FastAPI(
        title="OmniOPD verifier",
        version="1",
        summary="Dirichlet-smoothed semantic agreement between student drafts and teacher chunks",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)
    app.add_exception_handler(VerifierError, on_verifier_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app
