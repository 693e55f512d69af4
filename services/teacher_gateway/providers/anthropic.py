"""``provider: anthropic``: the Anthropic Messages API through the official ``anthropic`` SDK.

The Messages API returns one answer per request (it has no ``n``), so ``n`` samples are ``n``
concurrent requests, each billed for the whole prompt (:meth:`backend_calls` tells the core's
rate limiter so). When some of them fail, the others still finish, and their samples are kept
for the core's retry of the request, which then asks only for the missing ones: a sample is
never paid for twice. Continuation: Claude models up to 4.5 (Claude Haiku 4.5 among them) continue
a final assistant turn, a true continuation; Claude 4.6 and later answer such a prefill with
HTTP 400 ("This model does not support assistant message prefill"), which is mapped to
``ErrorKind.PREFILL_UNSUPPORTED``: ``continuation: auto`` then switches the teacher to
instruction (see :mod:`.chat`). The API refuses a final assistant turn ending in whitespace;
:mod:`.continuation` moves that whitespace out and back.

Requests go through ``AsyncAnthropic.post`` (the SDK's documented raw request method) with a
plain JSON body; this SDK version no longer types ``temperature``/``top_p`` anyway. The API takes temperatures in [0, 1] (a higher one fails here, before any call)
and only the samplers that matter are sent, because Claude 4.5 models refuse ``temperature``
and ``top_p`` together (:func:`sampling_fields`). There is no ``seed``: a request's ``seed``
only separates cache entries.
"""

from __future__ import annotations

from typing import Any

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import ErrorKind, Message, ProviderError, SampleParams
from omniopd.gateway.providers.chat import ChatProvider, Replies, Reply
from omniopd.gateway.providers.continuation import Mode
from omniopd.gateway.providers.fanout import Leftovers, settle
from omniopd.gateway.providers.hosted import (
    finish_reason,
    json_field,
    post_json,
    read_api_key,
    request_body,
    sdk_http_client,
)

MAX_TEMPERATURE = 1.0
PREFILL_MARKERS = ("prefill",)


def sampling_fields(temperature: float, top_p: float) -> dict[str, float]:
    """The sampling fields to send: one sampler where one is enough.

    Claude 4.5 models refuse ``temperature`` and ``top_p`` together. ``top_p`` at 1 changes
    nothing, and ``temperature`` at 1 is the API's default, so either is left out when it is
    neutral; only a request that truly asks for both sends both (older models accept it).
    """
    if top_p >= 1.0:
        return {"temperature": temperature}
    if temperature == 1.0:
        return {"top_p": top_p}
    return {"temperature": temperature, "top_p": top_p}


class AnthropicProvider(ChatProvider):
    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self._client: Any = None
        self._where = f"anthropic {config.model}"
        # Samples of a failed attempt, by (mode, request), so its retry pays only for the rest.
        self.leftovers: Leftovers[tuple[Mode, SampleParams], tuple[Reply, int]] = Leftovers()

    async def start(self) -> None:
        import anthropic

        key = read_api_key(self.config.name, self.config.api_key_env, "ANTHROPIC_API_KEY")
        self._client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=self.config.base_url,
            max_retries=0,  # the gateway core retries, with its own backoff and deadline
            timeout=self.config.timeout_s,
            http_client=sdk_http_client(anthropic),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def backend_calls(self, params: SampleParams) -> int:
        """One request per sample, less the samples kept from a failed attempt."""
        kept = self.leftovers.count((self.continuation.current, params))
        return max(1, params.n - kept)

    def request_body(self, messages: list[Message], params: SampleParams) -> dict[str, Any]:
        """The JSON body of ``POST /v1/messages`` for one sample."""
        if params.temperature > MAX_TEMPERATURE:
            raise ProviderError(
                ErrorKind.BAD_REQUEST,
                f"temperature {params.temperature:g} is above the Anthropic API's maximum "
                f"{MAX_TEMPERATURE:g}",
            )
        body = request_body(
            self.config.options,
            model=self.config.model,
            max_tokens=params.max_tokens,
            messages=[
                {"role": m.role, "content": m.content} for m in messages if m.role != "system"
            ],
            **sampling_fields(params.temperature, params.top_p),
        )
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        return body

    async def request(
        self, mode: Mode, messages: list[Message], params: SampleParams, timeout: float
    ) -> Replies:
        if self._client is None:
            raise RuntimeError(f"teacher {self.config.name!r}: start() was not called")
        body = self.request_body(messages, params)
        markers = PREFILL_MARKERS if mode == "prefill" else ()
        key = (mode, params)
        kept = self.leftovers.take(key)
        calls = [
            post_json(
                self._client,
                "/v1/messages",
                body,
                timeout=timeout,
                where=self._where,
                prefill_markers=markers,
            )
            for _ in range(params.n - len(kept))
        ]
        fresh, error = await settle(calls)
        answers = kept + [self.parse(a) for a in fresh]
        if error is not None:
            self.leftovers.keep(key, answers)
            raise error
        return Replies(
            replies=[reply for reply, _ in answers],
            input_tokens=sum(tokens for _, tokens in answers),
        )

    def parse(self, answer: dict[str, Any]) -> tuple[Reply, int]:
        """One Messages answer as ``(reply, input tokens)``."""
        blocks = json_field(answer, "content", list, self._where)
        usage = json_field(answer, "usage", dict, self._where)
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
        reply = Reply(
            text=text,
            finish_reason=finish_reason(answer.get("stop_reason")),
            output_tokens=int(usage.get("output_tokens") or 0),
        )
        return reply, int(usage.get("input_tokens") or 0)
