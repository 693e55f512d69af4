"""The gateway's ``teachers.yaml``: which teachers exist, how to reach them, their limits.

A bad file fails at start with the entry and the field named, e.g.
``teachers.yaml: teachers[1] (name 'haiku') -> limits.requests_per_minute: Input should be
greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ProviderName = Literal["anthropic", "openai", "openai_completions", "hf", "vllm"]
CHAT_PROVIDERS = ("anthropic", "openai")
LOCAL_PROVIDERS = ("hf", "vllm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Per-teacher limits; ``None`` means unlimited. Shared by all replicas through Redis."""

    requests_per_minute: int | None = Field(None, gt=0)
    input_tokens_per_minute: int | None = Field(None, gt=0)
    output_tokens_per_minute: int | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, gt=0)
    # How long a request may wait for capacity before failing with RESOURCE_EXHAUSTED.
    max_queue_wait_s: float = Field(30.0, ge=0)


class Prices(_Strict):
    """US dollars per million tokens, for the spend metric."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class TeacherConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    provider: ProviderName
    # A hosted model id, or a local path / hub name for hf and vllm.
    model: str = Field(min_length=1)
    base_url: str | None = None
    # The environment variable holding the key; the key itself never appears in the config.
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Tokenizer for chat templates (openai_completions) or a local model (default: the model).
    tokenizer: str | None = None
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # How a chat teacher continues a partial answer (see docs/gateway.md).
    continuation: Literal["prefill", "instruction", "auto"] = "auto"
    max_n: int = Field(16, gt=0, le=256)
    max_tokens: int = Field(512, gt=0)
    # Per-attempt backend timeout and the retry budget; the request's deadline bounds both.
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    limits: Limits = Limits()
    prices: Prices | None = None
    # Extra keyword arguments passed through to the backend call (e.g. vLLM's extra_body).
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _provider_fields(self) -> TeacherConfig:
        if self.provider == "openai_completions" and not self.base_url:
            raise ValueError("base_url is required for provider 'openai_completions'")
        if self.provider not in LOCAL_PROVIDERS and self.device != "cpu":
            raise ValueError(f"device applies to local providers {LOCAL_PROVIDERS} only")
        return self


class CacheConfig(_Strict):
    max_entries: int = Field(100_000, gt=0)  # in-memory LRU bound
    ttl_s: float = Field(7 * 24 * 3600, gt=0)


class GatewayConfig(_Strict):
    teachers: list[TeacherConfig] = Field(min_length=1)
    cache: CacheConfig = CacheConfig()
    # Request limits checked before any backend call (INVALID_ARGUMENT above them).
    max_messages: int = Field(256, gt=0)
    max_request_chars: int = Field(400_000, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for t in self.teachers:
            if t.name in seen:
                raise ValueError(f"teacher name {t.name!r} appears twice")
            seen.add(t.name)
        return self

    def teacher(self, name: str) -> TeacherConfig | None:
        return next((t for t in self.teachers if t.name == name), None)


class ConfigError(ValueError):
    """A teachers.yaml that cannot be used; the message names the entry and field."""


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    parts: list[str] = []
    for i, key in enumerate(loc):
        if isinstance(key, int):
            parts[-1] = f"{parts[-1]}[{key}]" if parts else f"[{key}]"
            if loc[:i] == ("teachers",) and isinstance(raw, dict):
                entries = raw.get("teachers") or []
                entry = entries[key] if key < len(entries) else None
                if isinstance(entry, dict) and "name" in entry:
                    parts[-1] += f" (name {entry['name']!r})"
        else:
            parts.append(str(key))
    if len(parts) > 1:
        return f"{parts[0]} -> {'.'.join(parts[1:])}"
    return parts[0] if parts else "(top level)"


def parse_config(raw: Any, source: str = "config") -> GatewayConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping with a 'teachers' list")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: {_where(tuple(e['loc']), raw)}: {e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(raw, str(path))
