"""Verifier settings: ``OMNIOPD_VERIFIER_*`` environment variables, overridable by CLI flags.

``REDIS_URL`` is read without the prefix, the one name every OmniOPD service shares.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings

from omniopd.settings import settings_config
from omniopd.verifier.protocol import (
    ALPHA_MAX,
    ALPHA_MIN,
    DEFAULT_MODEL,
    Metric,
    Posterior,
    Prior,
    Reward,
)


class VerifierSettings(BaseSettings):
    """Everything the verifier reads at start-up; the scoring fields are per-request defaults."""

    model_config = settings_config("VERIFIER_")

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    model: str = Field(DEFAULT_MODEL, min_length=1)
    device: str | None = None
    token: str | None = Field(None, description="bearer token; unset means no auth")

    # Scoring defaults (a request may override each one).
    metric: Metric = "embedding"
    prior: Prior = "student"
    alpha: float = Field(2.0, ge=ALPHA_MIN, le=ALPHA_MAX)
    reward: Reward = "prob"
    posterior: Posterior = "beta_binomial"
    normalize_advantage: bool = False
    hybrid_weight: float = Field(0.5, ge=0.0, le=1.0, description="weight of `embedding`")
    lexical_max_n: int = Field(6, ge=1, le=16)
    lexical_beta: float = Field(1.0, gt=0.0, le=16.0)

    # Request limits (413 beyond them).
    max_groups: int = Field(256, ge=1)
    max_texts: int = Field(4096, ge=1, description="texts per request, all groups together")
    max_text_chars: int = Field(4000, ge=1)
    max_request_chars: int = Field(1_000_000, ge=1)
    max_body_bytes: int = Field(16 * 2**20, ge=1024)

    # Dynamic batching.
    max_batch_texts: int = Field(256, ge=1, description="texts per encode call")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    encode_batch_size: int = Field(64, ge=1, description="sentence-transformers batch size")
    max_queue_texts: int = Field(16384, ge=1, description="texts waiting; 429 beyond")
    retry_after_s: int = Field(1, ge=1)

    # Embedding cache: in memory unless REDIS_URL is set.
    cache_size: int = Field(
        20_000, ge=0, description="vectors in the memory LRU (384 floats: 1.5 KiB each); 0 = off"
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"))
    redis_prefix: str = "omniopd:verifier:emb:"
    redis_ttl_s: int = Field(7 * 24 * 3600, ge=0, description="0 keeps entries forever")

    @field_validator("max_queue_texts")
    @classmethod
    def _queue_holds_one_request(cls, value: int, info: ValidationInfo) -> int:
        max_texts = info.data.get("max_texts")
        if max_texts is not None and value < max_texts:
            raise ValueError(
                f"must be at least max_texts ({max_texts}), or a request within the limits "
                "could never be queued"
            )
        return value
