"""What the two OpenAI-protocol providers share: the HTTP client, keys by host, and ``n``.

``n`` asks an OpenAI-compatible server for several choices from one request (one prefill on
vLLM and SGLang). Not every server honours it: ``transformers serve`` answers one choice
whatever ``n`` says. :class:`ChoiceBudget` learns from the first short answer how many choices
a server really gives, asks for the rest at once in further requests (each with its own seed,
so seeded samples still differ), and tells the core's rate limiter how many requests a sample
will take from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import ErrorKind, ProviderError
from omniopd.gateway.providers.fanout import gather_all
from omniopd.gateway.providers.hosted import json_field, read_api_key, split_count
from omniopd.gateway.providers.http import JSONClient, sdk_identity

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
HostedAPI = Literal["openai", "gemini"]
_HOSTS: dict[HostedAPI, tuple[str, ...]] = {
    "openai": ("api.openai.com", ".openai.azure.com"),
    "gemini": ("generativelanguage.googleapis.com", "aiplatform.googleapis.com"),
}
_KEY_ENV: dict[HostedAPI, str] = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}
# Sent to self-hosted servers configured without a key (the SDK insists on one; vLLM ignores it).
NO_KEY = "EMPTY"


def hosted_api(base_url: str | None) -> HostedAPI | None:
    """``"openai"`` or ``"gemini"`` for their hosted endpoints; ``None`` for any other server."""
    host = (urlparse(base_url or OPENAI_URL).hostname or "").lower()
    for api, suffixes in _HOSTS.items():
        if any(host == s.lstrip(".") or host.endswith(s) for s in suffixes):
            return api
    return None


async def make_client(config: TeacherConfig, where: str) -> JSONClient:
    """A started :class:`JSONClient` for this teacher, with the ``openai`` SDK's identity.

    The key comes from ``api_key_env``, or for OpenAI's and Gemini's hosted endpoints from
    ``OPENAI_API_KEY``/``GEMINI_API_KEY``; a self-hosted server configured without
    ``api_key_env`` gets no real key, so a hosted-API key never travels to another server.
    The SDK's client is built only to read what it would send (:func:`sdk_identity`: the key
    as a bearer token, ``OPENAI_ORG_ID``/``OPENAI_PROJECT_ID`` headers, the base URL).
    """
    import openai

    api = hosted_api(config.base_url)
    key = read_api_key(config.name, config.api_key_env, _KEY_ENV.get(api) if api else None)
    sdk = openai.AsyncOpenAI(api_key=key or NO_KEY, base_url=config.base_url or OPENAI_URL)
    try:
        base_url, headers = sdk_identity(sdk)
    finally:
        await sdk.close()
    client = JSONClient(base_url, headers, where=where)
    await client.start()
    return client


@dataclass(frozen=True, slots=True)
class Answer:
    """The choices of one or more requests, with the prompt tokens billed for them."""

    choices: list[dict[str, Any]]
    prompt_tokens: int
    # Output tokens billed per request, and the choices each request returned (in order).
    completion_tokens: list[int]
    sizes: list[int]


class ChoiceBudget:
    """How many choices one request to this server really returns (see the module docstring)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.per_request: int | None = None  # None: as many as asked, until shown otherwise

    def plan(self, n: int) -> list[int]:
        """The ``n`` of each request needed for ``n`` choices: ``[n]`` unless capped."""
        k = self.per_request
        if k is None or k >= n:
            return [n]
        return [k] * (n // k) + ([n % k] if n % k else [])

    def learn(self, asked: int, got: int) -> None:
        if 0 < got < asked and (self.per_request is None or got < self.per_request):
            self.per_request = got
            log.warning(
                "%s answered %d of %d choices: it ignores or caps n; sending %d choice(s) per "
                "request from now on",
                self.where,
                got,
                asked,
                got,
            )

    async def collect(
        self, n: int, seed: int | None, call: Callable[[int, int | None], Awaitable[dict[str, Any]]]
    ) -> Answer:
        """``n`` choices from as many ``call(n_i, seed_i)`` requests as the server needs.

        The first request carries the request's own seed; later ones ``seed + i`` (``i``: the
        choices asked for before them), so a seeded request stays reproducible yet its samples
        differ. Every request must return at least one choice, so this ends.
        """
        choices: list[dict[str, Any]] = []
        prompt_tokens = 0
        completion: list[int] = []
        sizes: list[int] = []
        while len(choices) < n:
            plan = self.plan(n - len(choices))
            offsets = [len(choices) + sum(plan[:i]) for i in range(len(plan))]
            seeds = [None if seed is None else seed + off for off in offsets]
            answers = await gather_all([call(k, s) for k, s in zip(plan, seeds, strict=True)])
            for asked, answer in zip(plan, answers, strict=True):
                got = json_field(answer, "choices", list, self.where)
                if not got:
                    raise ProviderError(ErrorKind.UNAVAILABLE, f"{self.where}: answered no choices")
                self.learn(asked, len(got))
                got = sorted(got, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
                kept = got[:asked]
                usage = answer.get("usage") or {}
                prompt_tokens += int(usage.get("prompt_tokens") or 0)
                completion.append(int(usage.get("completion_tokens") or 0))
                sizes.append(len(kept))
                choices.extend(kept)
        return Answer(choices[:n], prompt_tokens, completion, sizes)


def approx_tokens(text: str) -> int:
    """About four characters a token: for servers that report no usage."""
    return (len(text) + 3) // 4


def output_tokens(
    answer: Answer, texts: list[str], counter: Callable[[str], int] = approx_tokens
) -> list[int]:
    """Each choice's output tokens: its request's billed total shared out by text length.

    A server that reports no usage gets ``counter`` (a tokenizer's count where the provider
    has one, else about four characters a token) applied to each text.
    """
    out: list[int] = []
    start = 0
    for billed, size in zip(answer.completion_tokens, answer.sizes, strict=True):
        part = texts[start : start + size]
        start += size
        if billed > 0:
            out.extend(split_count(billed, [len(t) for t in part]))
        else:
            out.extend(counter(t) for t in part)
    return out
