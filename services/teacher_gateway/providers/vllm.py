"""``vllm``: an in-process vLLM engine (the optional ``omniopd[vllm]`` extra).

vLLM is imported when the teacher starts, never when the gateway imports this module, so a
gateway without vLLM installed runs every other teacher; configuring a ``vllm`` teacher without
it fails at start with how to install it. One engine request with ``n`` samples shares one
prefill (vLLM forks the sequence after the prompt); the prompt is the chat template plus the
partial answer (``local.py``), so this is a true continuation.
"""

from __future__ import annotations

import uuid
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
from omniopd.gateway.providers.local import render_prompt, require_chat_template

INSTALL_HINT = "pip install 'omniopd[vllm]' (vLLM needs a CUDA GPU)"
DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise RuntimeError(f"vLLM is not installed ({err}); {INSTALL_HINT}") from err
    return vllm


class VLLMProvider(Provider):
    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.engine: Any = None
        self.tokenizer: Any = None
        self._vllm: Any = None

    @property
    def supports_continuation(self) -> bool:
        return True

    async def start(self) -> None:
        vllm = import_vllm()
        from transformers import AutoTokenizer

        c = self.config
        source = c.tokenizer or c.model
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        require_chat_template(self.tokenizer, source)
        args = vllm.AsyncEngineArgs(
            model=c.model, tokenizer=source, dtype=DTYPES[c.dtype], **c.options
        )
        self.engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._vllm = vllm

    async def aclose(self) -> None:
        if self.engine is not None and hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
        self.engine = None

    def prompt_ids(self, params: SampleParams) -> list[int]:
        text = render_prompt(self.tokenizer, params)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def estimate_input_tokens(self, params: SampleParams) -> int:
        return len(self.prompt_ids(params))

    async def sample(self, params: SampleParams, *, timeout: float) -> SampleResult:
        if self.engine is None:
            raise ProviderError(ErrorKind.UNAVAILABLE, "the vLLM engine is not started")
        sampling = self._vllm.SamplingParams(
            n=params.n,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        prompt = {"prompt_token_ids": self.prompt_ids(params)}
        request_id = uuid.uuid4().hex
        final = None
        try:
            async for output in self.engine.generate(prompt, sampling, request_id):
                final = output
        except BaseException:
            await self.engine.abort(request_id)  # the core gave up (timeout, cancel)
            raise
        if final is None:
            raise ProviderError(ErrorKind.UNAVAILABLE, "vLLM returned no output")
        chunks = tuple(
            Chunk(o.text, "length" if o.finish_reason == "length" else "stop", len(o.token_ids))
            for o in final.outputs
        )
        return SampleResult(
            chunks=chunks,
            input_tokens=len(final.prompt_token_ids or prompt["prompt_token_ids"]),
            output_tokens=sum(c.output_tokens for c in chunks),
            continuation="prefill",
        )
