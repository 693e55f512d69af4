"""``provider: openai``: Chat Completions through the official ``openai`` SDK, with ``n``.

One teacher entry serves OpenAI, Gemini's OpenAI-compatible endpoint (``base_url:
https://generativelanguage.googleapis.com/v1beta/openai/``) and any OpenAI-compatible chat
server (vLLM, SGLang, ...). Continuation:

* OpenAI and Gemini cannot continue an assistant message, so ``continuation: auto`` means
  instruction there from the start (no wasted probe).
* Elsewhere ``auto`` (and ``prefill``) send the partial answer as a final assistant message with
  ``continue_final_message: true, add_generation_prompt: false``, the vLLM/SGLang option that
  renders the chat template up to that message, unclosed, so the model continues it. A server
  that rejects the option (HTTP 400/422 naming it) switches an ``auto`` teacher to instruction.
  A server that silently ignores it would answer afresh instead: configure such a server with
  ``continuation: instruction``.

Requests go out through a pooled aiohttp client (``providers/http.py``) with the headers and
base URL the ``openai`` SDK would use (it is built to read them), without the SDK's per-call
machinery, which cost about as much CPU as the rest of the gateway together.
"""

from __future__ import annotations

from typing import Any

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.chat import ChatProvider, Replies, Reply
from omniopd.gateway.providers.continuation import Mode
from omniopd.gateway.providers.hosted import finish_reason, request_body
from omniopd.gateway.providers.http import JSONClient
from omniopd.gateway.providers.openai_common import (
    ChoiceBudget,
    hosted_api,
    make_client,
    output_tokens,
)

PREFILL_MARKERS = ("continue_final_message", "add_generation_prompt", "prefill")
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}


class OpenAIChatProvider(ChatProvider):
    def __init__(self, config: TeacherConfig) -> None:
        self.hosted = hosted_api(config.base_url)
        auto_instruction = config.continuation == "auto" and self.hosted is not None
        super().__init__(config, initial_mode="instruction" if auto_instruction else None)
        self._client: JSONClient | None = None
        self._where = f"openai-chat {config.model}"
        self.budget = ChoiceBudget(self._where)

    async def start(self) -> None:
        self._client = await make_client(self.config, self._where)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def backend_calls(self, params: SampleParams) -> int:
        return len(self.budget.plan(params.n))

    def request_body(
        self, mode: Mode, messages: list[Message], params: SampleParams
    ) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions`` (``n`` and ``seed`` are set per call)."""
        # OpenAI's newer models take only max_completion_tokens; most other servers max_tokens.
        max_field = "max_completion_tokens" if self.hosted == "openai" else "max_tokens"
        fields: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            max_field: params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            fields["stop"] = list(params.stop)
        if mode == "prefill" and messages and messages[-1].role == "assistant":
            fields.update(CONTINUE_FINAL_MESSAGE)
        return request_body(self.config.options, **fields)

    async def request(
        self, mode: Mode, messages: list[Message], params: SampleParams, timeout: float
    ) -> Replies:
        client = self._client
        if client is None:
            raise RuntimeError(f"teacher {self.config.name!r}: start() was not called")
        body = self.request_body(mode, messages, params)
        markers = PREFILL_MARKERS if "continue_final_message" in body else ()

        def call(n: int, seed: int | None):
            one = {**body, "n": n}
            if seed is not None:
                one["seed"] = seed
            return client.post("/chat/completions", one, timeout=timeout, prefill_markers=markers)

        answer = await self.budget.collect(params.n, params.seed, call)
        texts = [_content(c, self._where) for c in answer.choices]
        tokens = output_tokens(answer, texts)
        replies = [
            Reply(text, finish_reason(c.get("finish_reason")), count)
            for text, c, count in zip(texts, answer.choices, tokens, strict=True)
        ]
        input_tokens = answer.prompt_tokens or self.estimate_input_tokens(params)
        return Replies(replies, input_tokens)


def _content(choice: Any, where: str) -> str:
    """A choice's text; ``null`` content (a refusal, say) is empty text, not an error."""
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ProviderError(
            ErrorKind.UNAVAILABLE, f"{where}: malformed answer: a choice has no message"
        )
    content = message.get("content")
    return content if isinstance(content, str) else ""
