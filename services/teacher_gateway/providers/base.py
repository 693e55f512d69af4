"""The one interface every teacher backend implements.

A provider turns a :class:`SampleParams` (a conversation, the answer so far, sampling settings)
into ``n`` continuations of that answer. Everything around the call (validation, cache, rate
limits, retries, metrics, spend) is the gateway core's job, so a provider is only the
translation to one backend's API and back. Providers raise :class:`ProviderError` (never a
backend SDK's exception) so the core can decide what to retry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omniopd.gateway.config import TeacherConfig


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class SampleParams:
    """One validated request: continue ``partial_answer`` after ``messages``, ``n`` times."""

    messages: tuple[Message, ...]
    partial_answer: str
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str  # the continuation only, never the partial answer again
    finish_reason: str  # "stop" (end of answer or a stop string) | "length"
    output_tokens: int


@dataclass(frozen=True, slots=True)
class SampleResult:
    chunks: tuple[Chunk, ...]
    input_tokens: int  # billed prompt tokens, summed over the backend calls made
    output_tokens: int  # billed output tokens, summed over chunks
    # How the partial answer was continued: "prefill" (true continuation) or "instruction".
    continuation: str = "prefill"


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429: retry after ``retry_after`` when given
    UNAVAILABLE = "unavailable"  # 5xx, connection refused or dropped: retry with backoff
    TIMEOUT = "timeout"  # the backend did not answer in time: retry within the deadline
    BAD_REQUEST = "bad_request"  # 4xx the backend will refuse again: do not retry
    AUTH = "auth"  # 401/403: do not retry
    PREFILL_UNSUPPORTED = "prefill_unsupported"  # the model refuses an assistant prefill


RETRYABLE = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT})


@dataclass(eq=False)
class ProviderError(Exception):
    """A failed backend call, classified. ``message`` must never contain a credential."""

    kind: ErrorKind
    message: str
    retry_after: float | None = None  # seconds, from the backend's retry-after header
    status: int | None = None  # the backend's HTTP status, when there was one
    details: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class Provider(abc.ABC):
    """A teacher backend. One instance per configured teacher, shared by all requests.

    Implementations must be safe to call concurrently from one asyncio event loop; blocking
    work (local models) runs in a thread or executor so the loop keeps serving.
    """

    #: Called with the teacher's name when ``continuation: auto`` switches this teacher from
    #: prefill to instruction for good; the core wires it to its
    #: ``continuation_fallbacks_total{teacher}`` metric. Only chat providers ever call it.
    on_continuation_fallback: Callable[[str], None] | None = None

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config

    @property
    def continuation_fallbacks(self) -> int:
        """How many times this teacher switched from prefill to instruction (0 or 1)."""
        return 0

    @property
    @abc.abstractmethod
    def supports_continuation(self) -> bool:
        """True when the backend truly continues the partial answer (prefill or raw prompt)."""

    @abc.abstractmethod
    async def sample(self, params: SampleParams, *, timeout: float) -> SampleResult:
        """Return ``params.n`` continuations, or raise :class:`ProviderError`.

        ``timeout`` is the seconds left for this attempt; the core owns retries and deadlines.
        """

    def backend_calls(self, params: SampleParams) -> int:
        """How many backend requests :meth:`sample` makes (counted against requests/min).

        1 for backends that return ``n`` samples from one request; ``n`` for those that
        must be asked once per sample (e.g. the Anthropic Messages API).
        """
        return 1

    def estimate_input_tokens(self, params: SampleParams) -> int:
        """Tokens the request will be billed for as input, known before the call (for limits).

        The default is a conservative characters/3 estimate per backend call; providers with a
        tokenizer at hand override it with an exact count.
        """
        chars = sum(len(m.content) for m in params.messages) + len(params.partial_answer)
        return self.backend_calls(params) * (chars // 3 + 8)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights or open clients; called once before the server takes requests."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients, engines and threads."""


# provider name in teachers.yaml -> "module:Class", imported only when a teacher uses it,
# so the gateway starts without torch, vLLM or an SDK that no configured teacher needs.
PROVIDERS: dict[str, str] = {
    "anthropic": "omniopd.gateway.providers.anthropic:AnthropicProvider",
    "openai": "omniopd.gateway.providers.openai_chat:OpenAIChatProvider",
    "openai_completions": "omniopd.gateway.providers.openai_completions:OpenAICompletionsProvider",
    "hf": "omniopd.gateway.providers.hf:HFProvider",
    "vllm": "omniopd.gateway.providers.vllm:VLLMProvider",
}


def create_provider(config: TeacherConfig) -> Provider:
    import importlib

    module_name, _, class_name = PROVIDERS[config.provider].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeError(
            f"teacher {config.name!r}: provider {config.provider!r} needs a package that is "
            f"not installed ({err.name}); install it, e.g. `pip install 'omniopd[{config.provider}]'`"
        ) from err
    cls: type[Provider] = getattr(module, class_name)
    return cls(config)
