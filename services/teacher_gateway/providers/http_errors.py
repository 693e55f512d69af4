"""HTTP errors -> :class:`ProviderError`, one classification for both request paths.

:func:`status_error` reads the HTTP status, the backend's message and ``retry-after``. The
``anthropic`` and ``openai`` SDKs are built from the same generator and raise the same shapes
of exception (``APIStatusError`` with ``status_code``/``response``/``body``,
``APITimeoutError``, ``APIConnectionError``), which :func:`sdk_error` maps; the
``openai``-protocol providers' :class:`~.http.JSONClient` maps its own failures through
:func:`status_error`.
"""

from __future__ import annotations

import email.utils
import functools
import importlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.log import redact

# Longest backend error text carried into a ProviderError (and so into a gRPC status).
MAX_ERROR_CHARS = 300


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify_status(status: int, prefill_refused: bool = False) -> ErrorKind:
    """The kind of an HTTP error status (``prefill_refused``: the body says prefill is refused)."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 408:
        return ErrorKind.TIMEOUT
    if status in (409, 425) or status >= 500:  # 529: Anthropic "overloaded"
        return ErrorKind.UNAVAILABLE
    if status in (401, 403):
        return ErrorKind.AUTH
    if prefill_refused:
        return ErrorKind.PREFILL_UNSUPPORTED
    return ErrorKind.BAD_REQUEST


def error_text(body: object, fallback: str) -> str:
    """The human part of an error body (``{"error": {"message": ...}}`` or ``{"detail": ...}``)."""
    text: object = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            text = err.get("message") or err.get("detail")
        elif isinstance(err, str):
            text = err
        if text is None:
            text = body.get("detail") or body.get("message")
    elif isinstance(body, str):
        text = body
    return str(text if text else fallback)


def clean_message(message: str) -> str:
    """Never a credential, never an unbounded backend body."""
    message = redact(message)
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."


def status_error(
    status: int,
    body: object,
    headers: Mapping[str, str] | None,
    *,
    where: str,
    prefill_markers: Sequence[str] = (),
    fallback: str = "no message",
) -> ProviderError:
    """The :class:`ProviderError` for an HTTP error answer (``body`` decoded, or its text).

    ``prefill_markers``: lower-case phrases that, in a 400/422 body, mean the backend refuses a
    prefilled assistant turn (``"prefill"``, ``"continue_final_message"``).
    """
    text = error_text(body, fallback)
    refused = status in (400, 422) and any(m in text.lower() for m in prefill_markers)
    return ProviderError(
        kind=classify_status(status, refused),
        message=clean_message(f"{where}: HTTP {status}: {text}"),
        retry_after=parse_retry_after(headers),
        status=status,
    )


@functools.cache
def _sdk_modules() -> tuple[Any, ...]:
    """The installed SDKs among ``anthropic`` and ``openai`` (a gateway may have only one)."""
    found = []
    for name in ("anthropic", "openai"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return tuple(found)


def sdk_error(
    err: Exception, *, where: str, prefill_markers: Sequence[str] = ()
) -> ProviderError | None:
    """Classify an ``anthropic``/``openai`` SDK exception; ``None`` if ``err`` is not one.

    ``where`` names the backend in the message (``"anthropic claude-haiku-4-5"``).
    ``prefill_markers``: lower-case phrases that, in a 400/422 body, mean the backend refuses a
    prefilled assistant turn (``"prefill"``, ``"continue_final_message"``).
    """
    sdks = _sdk_modules()
    if isinstance(err, tuple(m.APIStatusError for m in sdks)):
        return status_error(
            err.status_code,
            err.body,
            err.response.headers,
            where=where,
            prefill_markers=prefill_markers,
            fallback=err.message,
        )
    if isinstance(err, tuple(m.APITimeoutError for m in sdks)):
        return ProviderError(ErrorKind.TIMEOUT, clean_message(f"{where}: the request timed out"))
    if isinstance(err, tuple(m.APIConnectionError for m in sdks)):
        cause = err.__cause__ or err.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return ProviderError(
            ErrorKind.UNAVAILABLE, clean_message(f"{where}: connection failed{detail}")
        )
    if isinstance(err, tuple(m.APIResponseValidationError for m in sdks)):
        return ProviderError(
            ErrorKind.UNAVAILABLE,
            clean_message(f"{where}: the backend's answer is not valid: {err}"),
        )
    return None


def worst_error(errors: Sequence[ProviderError]) -> ProviderError | None:
    """The error that decides what happens next: one not worth retrying, else the longest wait."""
    if not errors:
        return None
    final = [e for e in errors if not e.retryable]
    if final:
        return final[0]
    return max(errors, key=lambda e: e.retry_after or 0.0)
