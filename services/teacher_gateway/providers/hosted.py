"""What the HTTP-API providers share: keys, the SDK transport, one bounded call, JSON answers,
request bodies and token shares.

The ``anthropic`` provider posts through its SDK (:func:`post_json`); the ``openai``-protocol
providers post through :class:`~.http.JSONClient`. Either way a call is one attempt (the SDK's
own retries are off, ``max_retries=0``): the gateway core owns retries, budgets and deadlines.
How a failure becomes a :class:`ProviderError` is in ``http_errors.py``; running one request's
``n`` calls at once in ``fanout.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.gateway.providers.http_errors import sdk_error
from omniopd.log import register_secret

T = TypeVar("T")


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
