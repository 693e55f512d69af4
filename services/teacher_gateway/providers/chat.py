"""The part the chat-API providers (``anthropic``, ``openai``) share: continuation by mode.

A chat provider only says how to send one request in a given mode (:meth:`ChatProvider.request`)
and how to read the reply; this base builds the messages for the mode, turns the replies into
continuations of the partial answer, and carries out ``continuation: auto``: a prefill refused
by the backend switches the teacher to instruction for good and the same request is sent again
that way, within the attempt's time.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import (
    Chunk,
    ErrorKind,
    Message,
    Provider,
    ProviderError,
    SampleParams,
    SampleResult,
)
from omniopd.gateway.providers.continuation import (
    ContinuationMode,
    Mode,
    instruction_messages,
    prefill_messages,
    rejoin_after_whitespace,
    strip_repeated_prefix,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """One raw choice from a chat backend, before it becomes a :class:`Chunk`."""

    text: str
    finish_reason: str  # already "stop" | "length"
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Replies:
    replies: list[Reply]
    input_tokens: int


class ChatProvider(Provider):
    """A provider whose backend answers conversations; see the module docstring."""

    def __init__(self, config: TeacherConfig, *, initial_mode: Mode | None = None) -> None:
        super().__init__(config)
        self.continuation = ContinuationMode(
            config.name, config.continuation, initial=initial_mode, on_fallback=self._switched
        )

    def _switched(self, teacher: str) -> None:
        if self.on_continuation_fallback is not None:
            self.on_continuation_fallback(teacher)

    @property
    def supports_continuation(self) -> bool:
        return self.continuation.current == "prefill"

    @property
    def continuation_fallbacks(self) -> int:
        return self.continuation.fallbacks

    @staticmethod
    def messages_for(mode: Mode, params: SampleParams) -> tuple[list[Message], str]:
        """The conversation to send in ``mode``, and the whitespace held back from a prefill."""
        if mode == "prefill":
            return prefill_messages(params.messages, params.partial_answer)
        return instruction_messages(params.messages, params.partial_answer), ""

    def estimate_input_tokens(self, params: SampleParams) -> int:
        messages, _ = self.messages_for(self.continuation.current, params)
        chars = sum(len(m.content) for m in messages)
        return self.backend_calls(params) * (chars // 3 + 8)

    @abc.abstractmethod
    async def request(
        self, mode: Mode, messages: list[Message], params: SampleParams, timeout: float
    ) -> Replies:
        """Send ``messages`` and return ``params.n`` replies; raise :class:`ProviderError`.

        In prefill mode the last message (if any) is the assistant's partial answer, to be
        continued; a backend that refuses it raises ``ErrorKind.PREFILL_UNSUPPORTED``.
        """

    async def sample(self, params: SampleParams, *, timeout: float) -> SampleResult:
        mode = self.continuation.current
        started = asyncio.get_running_loop().time()
        try:
            return await self._sample_as(mode, params, timeout)
        except ProviderError as err:
            if (
                err.kind is not ErrorKind.PREFILL_UNSUPPORTED
                or self.continuation.configured != "auto"
            ):
                raise
            self.continuation.fall_back(err.message)
        left = timeout - (asyncio.get_running_loop().time() - started)
        if left <= 0:
            raise ProviderError(ErrorKind.TIMEOUT, f"teacher {self.config.name!r}: out of time")
        return await self._sample_as("instruction", params, left)

    async def _sample_as(self, mode: Mode, params: SampleParams, timeout: float) -> SampleResult:
        messages, held = self.messages_for(mode, params)
        got = await self.request(mode, messages, params, timeout)
        if mode == "prefill":
            texts = [rejoin_after_whitespace(held, r.text) for r in got.replies]
        else:
            texts = [strip_repeated_prefix(params.partial_answer, r.text) for r in got.replies]
        chunks = tuple(
            Chunk(text, r.finish_reason, r.output_tokens)
            for text, r in zip(texts, got.replies, strict=True)
        )
        return SampleResult(
            chunks=chunks,
            input_tokens=got.input_tokens,
            output_tokens=sum(r.output_tokens for r in got.replies),
            continuation=mode,
        )
