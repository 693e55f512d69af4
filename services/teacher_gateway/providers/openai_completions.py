"""``provider: openai_completions``: raw-prompt ``/v1/completions`` of any OpenAI-compatible
server (vLLM, SGLang, ``transformers serve``), posted with the ``openai`` SDK's URL and headers
through the pooled client of :mod:`.http`.

The gateway renders the conversation with the teacher's own chat template (the ``tokenizer``
of the teacher entry, else its ``model``, loaded with ``AutoTokenizer.from_pretrained``), ends
it with the generation prompt and appends the partial answer as raw text. The server then
continues exactly that text: a true continuation with no chat-API rules in the way, and all
``n`` samples share one prefill on servers that honour ``n`` (see
:mod:`.openai_common` for those that do not).

The prompt is rendered as the in-process teachers (``hf``, ``vllm``) render theirs
(:mod:`.local`). The tokenizer also gives exact input-token counts for the core's limits before
the call. A chat template that writes the BOS token itself would get a second one from the
server's tokenizer, so a leading BOS is removed from the rendered text when the tokenizer adds
one.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import (
    Chunk,
    ErrorKind,
    Provider,
    ProviderError,
    SampleParams,
    SampleResult,
)
from omniopd.gateway.providers.hosted import finish_reason, request_body
from omniopd.gateway.providers.http import JSONClient
from omniopd.gateway.providers.local import render_prompt, require_chat_template
from omniopd.gateway.providers.openai_common import ChoiceBudget, make_client, output_tokens

RENDER_CACHE_SIZE = 1024


def load_tokenizer(name_or_path: str) -> Any:
    """The teacher's tokenizer; it must have a chat template to render conversations with."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    require_chat_template(tokenizer, name_or_path)
    return tokenizer


class ServerPrompt:
    """The prompt text to send (chat template, generation prompt, partial answer) and its
    length in the server's tokens, with what depends only on the tokenizer worked out once.

    Rendered as the in-process teachers render it (:func:`.local.render_prompt`), less a
    leading BOS when the server's tokenizer will add one itself. Counted with the tokenizer's
    Rust encoder where it has one (what ``tokenizer(text)`` calls, without the Python wrapping
    around it: a third of the gateway's CPU per request with a 49k-token vocabulary).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token
        self._bos = bos if bos and _adds_bos(tokenizer) else ""
        self._fast = getattr(tokenizer, "backend_tokenizer", None)

    def text(self, params: SampleParams) -> str:
        text = render_prompt(self.tokenizer, params)
        if self._bos and text.startswith(self._bos):
            text = text[len(self._bos) :]
        return text

    def tokens(self, text: str, *, special: bool = True) -> int:
        """Tokens of ``text`` as the server counts them (``special``: BOS/EOS it adds)."""
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=special))
        return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


@dataclass(frozen=True, slots=True)
class Rendered:
    prompt: str
    tokens: int  # as the server's tokenizer will count them (special tokens included)


class OpenAICompletionsProvider(Provider):
    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self._client: JSONClient | None = None
        self._prompt: ServerPrompt | None = None
        self._where = f"openai-completions {config.model}"
        self.budget = ChoiceBudget(self._where)
        self._render = functools.lru_cache(maxsize=RENDER_CACHE_SIZE)(self._render_uncached)

    @property
    def supports_continuation(self) -> bool:
        return True

    async def start(self) -> None:
        self._client = await make_client(self.config, self._where)  # a missing key fails first
        name = self.config.tokenizer or self.config.model
        try:
            self._prompt = ServerPrompt(await asyncio.to_thread(load_tokenizer, name))
        except BaseException:
            await self.aclose()  # no open connection pool left behind by a failed start
            raise

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _render_uncached(self, params: SampleParams) -> Rendered:
        if self._prompt is None:
            raise RuntimeError(f"teacher {self.config.name!r}: start() was not called")
        prompt = self._prompt.text(params)
        return Rendered(prompt, self._prompt.tokens(prompt))

    def render(self, params: SampleParams) -> Rendered:
        """The prompt for ``params`` (cached: the core estimates tokens, then samples)."""
        return self._render(params)

    def count_tokens(self, text: str) -> int:
        assert self._prompt is not None
        return self._prompt.tokens(text, special=False)

    def backend_calls(self, params: SampleParams) -> int:
        return len(self.budget.plan(params.n))

    def estimate_input_tokens(self, params: SampleParams) -> int:
        """Exact: the rendered prompt counted by the teacher's tokenizer, once per request."""
        return self.backend_calls(params) * self.render(params).tokens

    async def sample(self, params: SampleParams, *, timeout: float) -> SampleResult:
        client = self._client
        if client is None:
            raise RuntimeError(f"teacher {self.config.name!r}: start() was not called")
        rendered = self.render(params)
        fields: dict[str, Any] = {
            "model": self.config.model,
            "prompt": rendered.prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            fields["stop"] = list(params.stop)
        body = request_body(self.config.options, **fields)

        def call(n: int, seed: int | None):
            one = {**body, "n": n}
            if seed is not None:
                one["seed"] = seed
            return client.post("/completions", one, timeout=timeout)

        answer = await self.budget.collect(params.n, params.seed, call)
        texts = [self._text(c) for c in answer.choices]
        counts = output_tokens(answer, texts, self.count_tokens)
        chunks = tuple(
            Chunk(text, finish_reason(c.get("finish_reason")), count)
            for text, c, count in zip(texts, answer.choices, counts, strict=True)
        )
        return SampleResult(
            chunks=chunks,
            input_tokens=answer.prompt_tokens or rendered.tokens * len(answer.sizes),
            output_tokens=sum(counts),
            continuation="prefill",
        )

    def _text(self, choice: Any) -> str:
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise ProviderError(
                ErrorKind.UNAVAILABLE, f"{self._where}: malformed answer: a choice has no text"
            )
        return text
