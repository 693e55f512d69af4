"""Request and response models of the verifier's HTTP API, shared by the server and the client.

Only pydantic is imported here, so ``omniopd.verifier.client`` loads without torch, FastAPI or
sentence-transformers. Scalar request fields are strict: a value must have the JSON type the
schema gives it (``0`` is not ``false``, ``"2"`` is not ``2``), so the API accepts what its
OpenAPI schema describes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Metric = Literal["embedding", "lexical", "hybrid", "edit", "rouge1"]
Prior = Literal["student", "uniform", "likelihood"]
Reward = Literal["prob", "logratio"]
Posterior = Literal["beta_binomial", "dirichlet"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Outside this range alpha gains nothing and float64 could round an estimate to exactly 0 or 1.
ALPHA_MIN = 1e-3
ALPHA_MAX = 1e6
MAX_ID_CHARS = 256


class Group(BaseModel):
    """One fork: K student drafts and M teacher chunks continuing the same context."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, max_length=MAX_ID_CHARS, description="echoed back; the group's index when absent"
    )
    drafts: list[str] = Field(min_length=1, description="K >= 1 student drafts")
    teacher: list[str] = Field(min_length=1, description="M >= 1 teacher chunks")
    context: str | None = Field(
        None, description="the shared context; not scored, counted toward the character limits"
    )
    prior_mean: (
        list[Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=True)]] | None
    ) = Field(
        None,
        description="K prior means in (0, 1], one per draft: required with prior `likelihood`"
        " (the student's geometric-mean token probability on each draft), ignored otherwise",
    )


class ScoreRequest(BaseModel):
    """``POST /v1/score``. Every field but ``groups`` defaults to the server's settings."""

    model_config = ConfigDict(extra="forbid")

    groups: list[Group] = Field(min_length=1)
    metric: Metric | None = None
    prior: Prior | None = None
    alpha: float | None = Field(None, ge=ALPHA_MIN, le=ALPHA_MAX, allow_inf_nan=False, strict=True)
    reward: Reward | None = None
    normalize_advantage: bool | None = Field(None, strict=True)
    posterior: Posterior | None = None
    hybrid_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        strict=True,
        description="weight of `embedding` in hybrid",
    )


class GroupScore(BaseModel):
    """Scores of one group; lists over drafts have length K, ``similarity`` is K x M."""

    id: str
    similarity: list[list[float]]
    student_agreement: list[float]
    teacher_agreement: list[float]
    variance: list[float]
    reward: list[float]
    advantage: list[float]


class Usage(BaseModel):
    texts: int = Field(description="distinct texts the request needed")
    cache_hits: int = Field(description="of those, how many embeddings came from the cache")


class ScoreResponse(BaseModel):
    """The scores, in request order, and the parameters they were computed with."""

    groups: list[GroupScore]
    model: str
    metric: Metric
    prior: Prior
    alpha: float
    reward: Reward
    posterior: Posterior
    normalize_advantage: bool
    hybrid_weight: float
    usage: Usage


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``, as OpenAI's API takes it (strings only, no token arrays)."""

    model_config = ConfigDict(extra="ignore")

    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="one text or a non-empty list of texts"
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None, ge=1, strict=True, description="must equal the model's, if given"
    )
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of float32 LE bytes")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Health(BaseModel):
    status: Literal["ok", "ready"]
    model: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The one error envelope of every non-2xx answer."""

    error: ErrorDetail
