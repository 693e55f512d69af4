"""A pooled keep-alive HTTP client for JSON APIs: POST a body, get a dict or a classified error.

The ``openai``-protocol providers (``openai``, ``openai_completions``) send their requests
through this rather than through the SDK's request path. The SDK still decides who is calling
(:func:`sdk_identity`: the key as a bearer token, the base URL, the organisation and project
headers, read from an SDK client built for the purpose), so the wire format is the SDK's: the
same URL, headers and JSON body (``tests/gateway/test_openai_chat.py`` sends the same requests
through the SDK and compares what the server received). What is skipped is the SDK's per-call
machinery (request-options models, header merging, an ``httpx`` request and response wrapped
around ``aiohttp``'s), which cost the gateway about as much CPU as everything else it does for
a request (``bench/providers.py``, ``bench/gateway.py``).

Like the SDK's client, it honours ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (looked up once, at
start: the base URL does not change) and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` (through OpenSSL's
default verify paths), follows redirects (dropping ``Authorization`` when one leaves the
origin) and keeps cookies.

Connections are HTTP/1.1 with keep-alive, pooled per teacher. An idle connection is dropped
after :data:`KEEPALIVE_S`, before the 5 s after which uvicorn (under vLLM, SGLang and
``transformers serve``) closes it from its side, so a request is not sent down a connection the
server is closing at that moment; a connection the server has already closed is never reused.
Each call is one attempt: a failure is a :class:`ProviderError` for the gateway core, which
owns retries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.gateway.providers.hosted import json_object
from omniopd.gateway.providers.http_errors import clean_message, status_error

KEEPALIVE_S = 4.0
# A guard against running out of sockets; the teacher's limits.max_concurrency is the real bound.
MAX_CONNECTIONS = 1024


def user_agent() -> str:
    try:
        return f"omniopd-gateway/{metadata.version('omniopd')}"
    except metadata.PackageNotFoundError:
        return "omniopd-gateway"


def sdk_identity(client: Any) -> tuple[str, dict[str, str]]:
    """``(base URL, headers)`` that an ``openai``/``anthropic`` SDK client sends with a request.

    The authentication headers and the SDK's default headers (``OpenAI-Organization``,
    ``OpenAI-Project``, ``anthropic-version``, ``Accept``, ``Content-Type``, any custom ones),
    less the SDK's own telemetry (``X-Stainless-*``) and with this gateway's ``User-Agent``:
    these requests do not go through the SDK, so they do not claim to.
    """
    headers = {
        k: v
        for k, v in {**client.default_headers, **client.auth_headers}.items()
        if isinstance(v, str) and not k.lower().startswith("x-stainless")
    }
    headers = {k: v for k, v in headers.items() if k.lower() != "user-agent"}
    headers["User-Agent"] = user_agent()
    return str(client.base_url).rstrip("/"), headers


def env_proxy(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy ``HTTP_PROXY``/``HTTPS_PROXY`` name for ``url`` (``NO_PROXY`` honoured), if any."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    return str(proxy), auth


class JSONClient:
    """POST JSON to one API; every failure is a :class:`ProviderError`, never a library's error.

    ``where`` names the backend in error messages (``"openai-chat gpt-4o-mini"``). Create and
    close it inside the event loop that uses it (:meth:`start`, :meth:`aclose`).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        where: str,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.where = where
        self.keepalive_s = keepalive_s
        self.proxy: str | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.proxy, self._proxy_auth = env_proxy(self.base_url)
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=self.keepalive_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=None),  # post() bounds each call as a whole
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float,
        prefill_markers: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The JSON object the API answers to ``POST {base_url}{path}`` with ``body``.

        ``timeout`` bounds the whole call (connecting, sending, every byte of the answer), so a
        backend that trickles bytes cannot hold a request past its deadline.
        ``prefill_markers``: lower-case phrases that, in a 400/422 body, mean the backend
        refuses a prefilled assistant turn.
        """
        if self._session is None:
            raise RuntimeError(f"{self.where}: the HTTP client was not started")
        try:
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as err:  # NaN, or an option YAML made unencodable
            raise ProviderError(
                ErrorKind.BAD_REQUEST,
                clean_message(f"{self.where}: the request cannot be sent as JSON: {err}"),
            ) from None
        try:
            async with asyncio.timeout(timeout):
                async with self._session.post(
                    self.base_url + path,
                    data=payload.encode(),
                    proxy=self.proxy,
                    proxy_auth=self._proxy_auth,
                ) as response:
                    raw = await response.read()
        except TimeoutError:
            raise ProviderError(
                ErrorKind.TIMEOUT, f"{self.where}: no answer within {timeout:.3g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as err:  # refused, reset, dropped mid-answer
            raise ProviderError(
                ErrorKind.UNAVAILABLE,
                clean_message(f"{self.where}: connection failed ({type(err).__name__}: {err})"),
            ) from err
        if response.status >= 400:
            raise status_error(
                response.status,
                _decode_error_body(raw),
                response.headers,
                where=self.where,
                prefill_markers=prefill_markers,
            )
        return json_object(raw, self.where)


def _decode_error_body(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()
