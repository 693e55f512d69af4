"""``hf``: a teacher loaded in-process with ``transformers``.

The prompt is the chat template plus the partial answer as raw text (``local.py``), so the model
truly continues it. The prompt runs once; its KV cache is copied to the ``n`` samples
(``Cache.batch_repeat_interleave``), which then decode together as one batch; a sample that ends
leaves the batch. Token counts are exact: the
prompt's tokens once (one prefill) and each sample's generated tokens.

Generation runs on one worker thread per teacher, so the event loop keeps serving (cache hits,
other teachers) while a model computes; a call past its deadline or given up by its caller stops
at the next decoding step.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
from omniopd.paths import unreadable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROMPT_MEMO = 256  # rendered prompts kept between estimate_input_tokens and sample
DECODE_CONTEXT = 8  # prompt tokens decoded with a sample so its first characters are exact


def sample_next(
    logits_NV: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """One token per row from ``logits_NV`` (N rows, V vocabulary): greedy at temperature 0,
    else softmax(logits / temperature) cut to the smallest set of mass >= ``top_p`` (nucleus
    sampling, Holtzman et al. 2020). Returns ``(N,)`` token ids."""
    if temperature == 0.0:
        return logits_NV.argmax(dim=-1)
    probs_NV = torch.softmax(logits_NV.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_NV, order_NV = probs_NV.sort(dim=-1, descending=True)
        before_NV = sorted_NV.cumsum(dim=-1) - sorted_NV  # mass strictly ahead of each token
        sorted_NV = sorted_NV.masked_fill(before_NV >= top_p, 0.0)
        probs_NV = torch.zeros_like(probs_NV).scatter_(-1, order_NV, sorted_NV)
    return torch.multinomial(probs_NV, 1, generator=generator).squeeze(-1)


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


@dataclass
class _Row:
    """One sample being decoded."""

    tokens: list[int]
    text: str = ""
    finish_reason: str = ""


class HFProvider(Provider):
    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_ids: frozenset[int] = frozenset()
        self._cache_arg = "cache"
        self._last_logits: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hf-{config.name}")
        self._prompts: OrderedDict[SampleParams, list[int]] = OrderedDict()
        # Fast tokenizers must not be used from two threads at once (the loop estimates
        # input tokens while the worker decodes).
        self._tokenizer_lock = threading.RLock()

    @property
    def supports_continuation(self) -> bool:
        return True

    # -- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        c = self.config
        for path in {c.model, c.tokenizer or c.model}:  # a hub name is no local path: skipped
            if problem := unreadable(Path(path)):
                raise PermissionError(f"teacher {c.name!r}: cannot read its model: {problem}")
        self.tokenizer = AutoTokenizer.from_pretrained(c.tokenizer or c.model)
        require_chat_template(self.tokenizer, c.tokenizer or c.model)
        dtype = "auto" if c.dtype == "auto" else DTYPES[c.dtype]
        model = AutoModelForCausalLM.from_pretrained(c.model, dtype=dtype)
        self.model = model.to(c.device).eval()
        # transformers 5 renamed the KV-cache argument from past_key_values to cache.
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        # Only the last position's logits are needed after the prompt (most models support it).
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        eos = model.generation_config.eos_token_id if model.generation_config else None
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(ids)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.model = None

    # -- prompt ---------------------------------------------------------------------------------

    def prompt_ids(self, params: SampleParams) -> list[int]:
        """Chat template with the generation prompt, then the partial answer as raw text."""
        with self._tokenizer_lock:
            ids = self._prompts.get(params)
            if ids is not None:
                self._prompts.move_to_end(params)
                return ids
            encoded = self.tokenizer(
                render_prompt(self.tokenizer, params), add_special_tokens=False
            )
            ids = list(encoded["input_ids"])
            self._prompts[params] = ids
            while len(self._prompts) > PROMPT_MEMO:
                self._prompts.popitem(last=False)
        return ids

    def estimate_input_tokens(self, params: SampleParams) -> int:
        return len(self.prompt_ids(params))  # exact: one prefill, whatever n is

    # -- sample ---------------------------------------------------------------------------------

    async def sample(self, params: SampleParams, *, timeout: float) -> SampleResult:
        if self.model is None:
            raise ProviderError(ErrorKind.UNAVAILABLE, "the model is not loaded (not started)")
        cancel = threading.Event()
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._generate, params, deadline, cancel
            )
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next step
            raise

    @torch.inference_mode()
    def _generate(
        self, params: SampleParams, deadline: float, cancel: threading.Event
    ) -> SampleResult:
        prompt = self.prompt_ids(params)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and len(prompt) + params.max_tokens > limit:
            raise ProviderError(
                ErrorKind.BAD_REQUEST,
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} exceeds the "
                f"model's context of {limit} tokens",
            )
        device = self.model.device
        generator = torch.Generator(device=device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()

        # Prefill once: (1, T) -> logits of the last position and the prompt's KV cache.
        prompt_1T = torch.tensor([prompt], device=device)
        out = self.model(input_ids=prompt_1T, use_cache=True, **self._last_logits)
        cache = self._cache_of(out)
        cache.batch_repeat_interleave(params.n)  # (1, ...) -> (n, ...): shared prefill
        logits_NV = out.logits[:, -1, :].expand(params.n, -1)

        rows = [_Row(tokens=[]) for _ in range(params.n)]
        live = list(range(params.n))  # rows still decoding, in batch order
        context = prompt[-DECODE_CONTEXT:]
        with self._tokenizer_lock:
            context_text = self.tokenizer.decode(context, skip_special_tokens=True)
        for step in range(params.max_tokens):
            if cancel.is_set() or time.monotonic() > deadline:
                raise ProviderError(ErrorKind.TIMEOUT, f"stopped after {step} decoding steps")
            next_N = sample_next(logits_NV, params.temperature, params.top_p, generator).tolist()
            keep = []
            for i, (r, token) in enumerate(zip(live, next_N, strict=True)):
                row = rows[r]
                row.tokens.append(token)
                if token in self.eos_ids:
                    row.finish_reason = "stop"
                    continue
                if params.stop:
                    text = self._continuation_text(context, context_text, row.tokens)
                    if first_stop(text, params.stop) >= 0:
                        row.finish_reason = "stop"
                        continue
                keep.append(i)
            if len(keep) < len(live):
                if not keep:
                    break
                cache.batch_select_indices(torch.tensor(keep, device=device))
                next_N = [next_N[i] for i in keep]
                live = [live[i] for i in keep]
            if step + 1 == params.max_tokens:
                break
            step_N1 = torch.tensor(next_N, device=device).unsqueeze(-1)
            out = self.model(input_ids=step_N1, use_cache=True, **{self._cache_arg: cache})
            cache = self._cache_of(out)
            logits_NV = out.logits[:, -1, :]

        chunks = []
        for row in rows:
            text = self._continuation_text(context, context_text, row.tokens)
            cut = first_stop(text, params.stop) if params.stop else -1
            if cut >= 0:
                text = text[:cut]
            finish = row.finish_reason or "length"
            if finish == "length":
                # Cut mid-character by max_tokens: drop the incomplete bytes' replacement marks
                # (as a streaming detokenizer holds them back) rather than return them as text.
                text = text.rstrip("\ufffd")
            chunks.append(Chunk(text, finish, len(row.tokens)))
        return SampleResult(
            chunks=tuple(chunks),
            input_tokens=len(prompt),
            output_tokens=sum(c.output_tokens for c in chunks),
            continuation="prefill",
        )

    @staticmethod
    def _cache_of(out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _continuation_text(self, context: list[int], context_text: str, tokens: list[int]) -> str:
        """The text ``tokens`` add after the prompt (decoded with the prompt's last tokens, so
        tokenizers that merge a leading space or byte pieces give the exact characters)."""
        with self._tokenizer_lock:
            full = self.tokenizer.decode(context + tokens, skip_special_tokens=True)
        return full[len(context_text) :] if full.startswith(context_text) else full
