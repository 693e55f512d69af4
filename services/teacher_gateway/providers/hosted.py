"""What the HTTP-API providers share: keys, HTTP errors -> :class:`ProviderError`, token shares.

Two request paths share one classification (:func:`status_error`: the HTTP status, the
backend's message, ``retry-after``). The ``anthropic`` provider posts through its SDK
(:func:`post_json`); the ``anthropic`` and ``openai`` SDKs are built from the same generator and
raise the same shapes of exception (``APIStatusError`` with ``status_code``/``response``/``body``,
``APITimeoutError``, ``APIConnectionError``), which :func:`sdk_error` maps. The
``openai``-protocol providers post through :class:`~.http.JSONClient`, which maps its own
failures. Either way a call is one attempt (the SDK's own retries are off,
``max_retries=0``): the gateway core owns retries, budgets and deadlines.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import importlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.log import redact, register_secret

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# Longest backend error text carried into a ProviderError (and so into a gRPC status).
MAX_ERROR_CHARS = 300


# -- keys ---------------------------------------------------------------------------------------


def read_api_key(teacher: str, env_var: str | None, default_env: str | None) -> str | None:
    """The key in ``env_var`` (or ``default_env`` when the config names none), registered as secret.

    A variable that the config names, or the provider's default for its own hosted API, must be
    set: starting without it fails with the variable's name (never its value). ``default_env``
    is ``None`` for self-hosted endpoints, which then get no key: a key meant for one provider
    is never sent to another server.
    """
    name = env_var or default_env
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(
            f"teacher {teacher!r}: environment variable {name} is not set; it must hold the API "
            f"key (set api_key_env in teachers.yaml to read another variable)"
        )
    register_secret(value)
    return value


# -- the HTTP transport -------------------------------------------------------------------------


def sdk_http_client(sdk: Any) -> Any:
    """The SDK's aiohttp-backed client (``sdk.DefaultAioHttpClient``) when aiohttp is installed.

    Both SDKs document this transport for high concurrency; measured with ``bench/backends.py``
    at 64 calls in flight it takes about half the CPU per call of their default httpx
    transport (whose connection pool walks every connection on each request). Without aiohttp
    (it is in the ``gateway`` extra) the SDK's default client is used: ``None``.
    """
    factory = getattr(sdk, "DefaultAioHttpClient", None)  # absent from older SDK versions
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return None
    return factory() if factory is not None else None


# -- errors -------------------------------------------------------------------------------------


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


async def call_backend(
    call: Awaitable[T], *, timeout: float, where: str, prefill_markers: Sequence[str] = ()
) -> T:
    """Await one SDK call, bounded by ``timeout`` seconds, with its errors classified.

    The SDK's own timeout applies per network phase (connect, each read); this bound is on the
    whole call, so a backend that trickles bytes cannot hold a request past its deadline.
    """
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise ProviderError(
            ErrorKind.TIMEOUT, f"{where}: no answer within {timeout:.3g} s"
        ) from None
    except Exception as err:
        mapped = sdk_error(err, where=where, prefill_markers=prefill_markers)
        if mapped is None:
            raise
        raise mapped from err


async def post_json(
    client: Any,
    path: str,
    body: Mapping[str, Any],
    *,
    timeout: float,
    where: str,
    prefill_markers: Sequence[str] = (),
) -> dict[str, Any]:
    """POST ``body`` through an SDK client and return the decoded JSON answer.

    Uses the SDKs' documented raw request method (``client.post(path, body=..., cast_to=...)``):
    the client's authentication, base URL, connection pool and error classes, without the
    typed request transform and response models, which cost about a millisecond of CPU per
    call (measured with ``bench/backends.py``) and which the gateway does not need.
    """
    raw = await call_backend(
        client.post(path, body=body, cast_to=bytes, options={"timeout": timeout}),
        timeout=timeout,
        where=where,
        prefill_markers=prefill_markers,
    )
    return json_object(raw, where)


def json_object(raw: bytes, where: str) -> dict[str, Any]:
    """A backend's answer decoded; anything but a JSON object is an ``UNAVAILABLE`` error."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.UNAVAILABLE, f"{where}: the answer is not a JSON object")
    return data


def json_field(data: Mapping[str, Any], name: str, kind: type[T], where: str) -> T:
    """``data[name]`` if it is a ``kind``; a malformed answer is a (retryable) backend fault."""
    value = data.get(name)
    if not isinstance(value, kind):
        raise ProviderError(
            ErrorKind.UNAVAILABLE,
            f"{where}: malformed answer: {name!r} should be {kind.__name__}, "
            f"got {type(value).__name__}",
        )
    return value


async def gather_all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once; the first failure cancels the rest and is raised as itself."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(c)) for c in calls]
    except BaseExceptionGroup as group_err:
        first = group_err.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _as_coroutine(call: Awaitable[T]) -> T:
    return await call


async def settle(calls: Sequence[Awaitable[T]]) -> tuple[list[T], ProviderError | None]:
    """Run ``calls`` at once and let every one finish: ``(answers, the error to report)``.

    For backends billed per call: a failure does not cancel the calls still running, so what
    they return is kept (see :class:`Leftovers`) rather than paid for and thrown away. Any
    exception other than :class:`ProviderError` is a bug and is raised as itself.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    answers: list[T] = []
    errors: list[ProviderError] = []
    for result in results:
        if isinstance(result, ProviderError):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.append(result)
    return answers, worst_error(errors)


def worst_error(errors: Sequence[ProviderError]) -> ProviderError | None:
    """The error that decides what happens next: one not worth retrying, else the longest wait."""
    if not errors:
        return None
    final = [e for e in errors if not e.retryable]
    if final:
        return final[0]
    return max(errors, key=lambda e: e.retry_after or 0.0)


class Leftovers(Generic[K, T]):
    """Answers already paid for by an attempt that failed as a whole, kept for its retry.

    When one of ``n`` per-sample calls fails, the core retries the request; the samples that
    did arrive are kept here under the request's key, and the retry asks only for the rest.
    Bounded: the oldest entries go first (a request whose retries never come is forgotten).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[K, list[T]] = OrderedDict()

    def take(self, key: K) -> list[T]:
        return self._kept.pop(key, [])

    def count(self, key: K) -> int:
        return len(self._kept.get(key, ()))

    def keep(self, key: K, answers: list[T]) -> None:
        if not answers:
            return
        self._kept[key] = answers
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)


# -- tokens and finish reasons ------------------------------------------------------------------


def split_count(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders), summing to ``total``.

    For backends that bill ``n`` choices' output tokens as one number.
    """
    if not weights:
        return []
    wsum = sum(weights)
    if wsum <= 0:
        weights, wsum = [1] * len(weights), len(weights)
    exact = [total * w / wsum for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def finish_reason(raw: str | None) -> str:
    """A backend's finish/stop reason as the gateway's ``"stop"`` or ``"length"``."""
    return "length" if raw in ("length", "max_tokens", "model_context_window_exceeded") else "stop"


def request_body(options: Mapping[str, Any], **ours: Any) -> dict[str, Any]:
    """The JSON body of one call: the teacher's pass-through ``options`` plus this call's fields.

    Options are extra body fields (``top_k``, ``chat_template_kwargs``, ...); an ``extra_body``
    mapping among them, as the SDKs spell it, is flattened in. Ours win where both set a key:
    the gateway's sampling settings are the request's.
    """
    out = {k: v for k, v in options.items() if k != "extra_body"}
    out.update(options.get("extra_body") or {})
    out.update(ours)
    return out
