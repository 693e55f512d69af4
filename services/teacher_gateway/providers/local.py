"""What the in-process providers (``hf``, ``vllm``) share: the prompt they continue.

The conversation goes through the teacher tokenizer's chat template with the generation prompt
on, and the partial answer follows as raw text, so the model continues it token for token (a
true continuation, whatever the student's tokenizer).
"""

from __future__ import annotations

from typing import Any

from omniopd.gateway.providers.base import SampleParams


def render_prompt(tokenizer: Any, params: SampleParams) -> str:
    conversation = [{"role": m.role, "content": m.content} for m in params.messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return text + params.partial_answer


def require_chat_template(tokenizer: Any, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer of {source!r} has no chat_template; local teachers render the "
            "conversation with it (set `tokenizer:` to one that has)"
        )
