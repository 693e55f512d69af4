"""The verifier's work: limits, embeddings through the cache and the batcher, and scoring.

The HTTP layer (``omniopd.verifier.api``) only routes requests here and turns
:class:`~omniopd.verifier.errors.VerifierError` into the error envelope.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from omniopd.verifier.batching import Batcher, BatcherStopped, QueueFull
from omniopd.verifier.cache import EmbeddingCache, MemoryCache, NoCache, RedisCache
from omniopd.verifier.embedder import Embedder
from omniopd.verifier.errors import VerifierError
from omniopd.verifier.lexical import (
    NgramProfile,
    chrf_matrix,
    edit_matrix,
    ngram_profile,
    rouge1_matrix,
    rouge1_tokens,
)
from omniopd.verifier.limits import check_embedding_limits, check_score_limits
from omniopd.verifier.metrics import VerifierMetrics
from omniopd.verifier.protocol import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    GroupScore,
    Metric,
    Posterior,
    Prior,
    Reward,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from omniopd.verifier.scoring import cosine_similarity, score_group
from omniopd.verifier.settings import VerifierSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreParams:
    """A request's scoring parameters with the server's defaults filled in."""

    metric: Metric
    prior: Prior
    alpha: float
    reward: Reward
    posterior: Posterior
    normalize_advantage: bool
    hybrid_weight: float

    @classmethod
    def resolve(cls, req: ScoreRequest, s: VerifierSettings) -> ScoreParams:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return cls(
            metric=pick(req.metric, s.metric),
            prior=pick(req.prior, s.prior),
            alpha=pick(req.alpha, s.alpha),
            reward=pick(req.reward, s.reward),
            posterior=pick(req.posterior, s.posterior),
            normalize_advantage=pick(req.normalize_advantage, s.normalize_advantage),
            hybrid_weight=pick(req.hybrid_weight, s.hybrid_weight),
        )


def check_prior_means(req: ScoreRequest) -> None:
    """Prior ``likelihood``: every group carries one prior mean per draft (422 otherwise).

    The range (0, 1] is the request model's (a value outside it is a 422 before this runs)."""
    for i, group in enumerate(req.groups):
        param = f"groups[{i}].prior_mean"
        if group.prior_mean is None:
            raise VerifierError(
                422,
                f"{param}: required with prior 'likelihood' (one mean in (0, 1] per draft)",
                param=param,
                code="missing",
            )
        if len(group.prior_mean) != len(group.drafts):
            raise VerifierError(
                422,
                f"{param}: {len(group.prior_mean)} values for {len(group.drafts)} drafts;"
                " give one per draft",
                param=param,
                code="length_mismatch",
            )


def published_similarities(
    metric: Metric, drafts: list[str], teacher: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(K, M) draft-vs-teacher and (K, K) draft-vs-draft similarities for ``edit``/``rouge1``."""
    if metric == "edit":
        return edit_matrix(drafts, teacher), edit_matrix(drafts, drafts)
    d_tokens = [rouge1_tokens(t) for t in drafts]
    return (
        rouge1_matrix(d_tokens, [rouge1_tokens(t) for t in teacher]),
        rouge1_matrix(d_tokens, d_tokens),
    )


def make_cache(settings: VerifierSettings, metrics: VerifierMetrics) -> EmbeddingCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            settings.redis_prefix,
            settings.redis_ttl_s,
            on_error=metrics.cache_errors.inc,
        )
    if settings.cache_size > 0:
        return MemoryCache(settings.cache_size)
    return NoCache()


class VerifierService:
    """One model, one cache, one batching worker; ``start`` inside the event loop that serves."""

    def __init__(
        self,
        settings: VerifierSettings,
        embedder: Embedder | None = None,
        cache: EmbeddingCache | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = VerifierMetrics()
        self.embedder = embedder or Embedder(settings.model, settings.device)
        self.cache = cache if cache is not None else make_cache(settings, self.metrics)
        self.batcher = Batcher(
            partial(self.embedder.encode, batch_size=settings.encode_batch_size),
            max_batch_texts=settings.max_batch_texts,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue_texts=settings.max_queue_texts,
            metrics=self.metrics,
        )
        self._on_fatal = on_fatal
        self._load_task: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None

    @property
    def model_name(self) -> str:
        return self.embedder.name

    @property
    def ready(self) -> bool:
        return self.embedder.loaded

    async def start(self) -> None:
        """Start the worker, and load the model in the background so health answers at once."""
        self.batcher.start()
        if not self.embedder.loaded and self._load_task is None:
            self._load_task = asyncio.create_task(self._load(), name="verifier-load")

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self.embedder.load)
        except Exception as err:
            self.load_error = err
            log.error("could not load the model %r: %s", self.embedder.name, err)
            if self._on_fatal is not None:
                self._on_fatal(err)

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.cache.close()

    def _not_ready(self) -> VerifierError:
        if self.load_error is not None:
            message = f"the model {self.model_name!r} failed to load: {self.load_error}"
        else:
            message = f"the model {self.model_name!r} is still loading"
        return VerifierError(
            503,
            message,
            type="service_unavailable",
            code="not_ready",
            retry_after=self.settings.retry_after_s,
        )

    def readiness(self) -> None:
        """Raise the 503 that ``/readyz`` answers while the model is not loaded and warmed."""
        if not self.ready:
            raise self._not_ready()

    async def vectors(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """(N,) distinct texts -> ((N, D) float32 embeddings, how many came from the cache)."""
        cached = await self.cache.get_many(self.model_name, texts)
        dim = self.embedder.dim if self.ready else None
        cached = [
            v if v is not None and (dim is None or v.shape == (dim,)) else None for v in cached
        ]
        missing = [t for t, v in zip(texts, cached, strict=True) if v is None]
        hits = len(texts) - len(missing)
        self.metrics.cache_hits.inc(hits)
        self.metrics.cache_misses.inc(len(missing))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            if not self.ready:
                raise self._not_ready()
            try:
                new = await self.batcher.embed(missing)
            except QueueFull as err:
                self.metrics.rejected.labels("queue_full").inc()
                raise VerifierError(
                    429,
                    f"{err}; retry after {self.settings.retry_after_s} s",
                    type="rate_limit_error",
                    code="queue_full",
                    retry_after=self.settings.retry_after_s,
                ) from None
            except BatcherStopped as err:
                raise VerifierError(
                    503,
                    str(err),
                    type="service_unavailable",
                    code="shutting_down",
                    retry_after=self.settings.retry_after_s,
                ) from None
            await self.cache.put_many(self.model_name, missing, new)
            fresh = dict(zip(missing, new, strict=True))
        rows = [v if v is not None else fresh[t] for t, v in zip(texts, cached, strict=True)]
        if not rows:
            return np.zeros((0, dim or 0), dtype=np.float32), 0
        return np.stack(rows).astype(np.float32, copy=False), hits

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        check_score_limits(req, self.settings)
        params = ScoreParams.resolve(req, self.settings)
        if params.prior == "likelihood":
            check_prior_means(req)
        texts = list(dict.fromkeys(t for g in req.groups for t in (*g.drafts, *g.teacher)))
        embeddings, hits = None, 0
        if params.metric in ("embedding", "hybrid"):
            embeddings, hits = await self.vectors(texts)
        groups = await asyncio.to_thread(self._score_groups, req, params, texts, embeddings)
        return ScoreResponse(
            groups=groups,
            model=self.model_name,
            usage=Usage(texts=len(texts), cache_hits=hits),
            **vars(params),
        )

    def _score_groups(
        self,
        req: ScoreRequest,
        params: ScoreParams,
        texts: list[str],
        embeddings_ND: np.ndarray | None,
    ) -> list[GroupScore]:
        row = {t: i for i, t in enumerate(texts)}
        profiles = None
        if params.metric in ("lexical", "hybrid"):
            n = self.settings.lexical_max_n
            profiles = [ngram_profile(t, n) for t in texts]
        out = []
        for index, group in enumerate(req.groups):
            if params.metric in ("edit", "rouge1"):
                s_KM, s_KK = published_similarities(params.metric, group.drafts, group.teacher)
            else:
                d_rows = [row[t] for t in group.drafts]
                t_rows = [row[t] for t in group.teacher]
                s_KM, s_KK = self._similarities(params, d_rows, t_rows, embeddings_ND, profiles)
            scores = score_group(
                s_KM,
                s_KK,
                prior=params.prior,
                alpha=params.alpha,
                reward=params.reward,
                posterior=params.posterior,
                normalize_advantage=params.normalize_advantage,
                prior_mean_K=np.asarray(group.prior_mean) if group.prior_mean else None,
            )
            out.append(
                GroupScore(
                    id=group.id if group.id is not None else str(index),
                    similarity=scores.similarity_KM.tolist(),
                    student_agreement=scores.student_agreement_K.tolist(),
                    teacher_agreement=scores.teacher_agreement_K.tolist(),
                    variance=scores.variance_K.tolist(),
                    reward=scores.reward_K.tolist(),
                    advantage=scores.advantage_K.tolist(),
                )
            )
        return out

    def _similarities(
        self,
        params: ScoreParams,
        d_rows: list[int],
        t_rows: list[int],
        embeddings_ND: np.ndarray | None,
        profiles: list[NgramProfile] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(K, M) draft-vs-teacher and (K, K) draft-vs-draft similarities for one group, rows
        indexing the request's distinct texts (``embeddings_ND`` rows, ``profiles`` items)."""
        parts: list[tuple[float, np.ndarray, np.ndarray]] = []
        if embeddings_ND is not None:
            drafts = embeddings_ND[d_rows]
            weight = 1.0 if params.metric == "embedding" else params.hybrid_weight
            parts.append(
                (
                    weight,
                    cosine_similarity(drafts, embeddings_ND[t_rows]),
                    cosine_similarity(drafts, drafts),
                )
            )
        if profiles is not None:
            beta = self.settings.lexical_beta
            drafts_p = [profiles[i] for i in d_rows]
            weight = 1.0 if params.metric == "lexical" else 1.0 - params.hybrid_weight
            parts.append(
                (
                    weight,
                    chrf_matrix(drafts_p, [profiles[i] for i in t_rows], beta),
                    chrf_matrix(drafts_p, drafts_p, beta),
                )
            )
        s_KM = sum(w * km for w, km, _ in parts)
        s_KK = sum(w * kk for w, _, kk in parts)
        return np.clip(s_KM, 0.0, 1.0), np.clip(s_KK, 0.0, 1.0)

    async def embeddings(self, req: EmbeddingRequest) -> EmbeddingResponse:
        if req.model is not None and req.model not in self.embedder.aliases:
            raise VerifierError(
                404,
                f"model: {req.model!r} is not served here; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        texts = [req.input] if isinstance(req.input, str) else req.input
        check_embedding_limits(texts, self.settings)
        if not self.ready:
            raise self._not_ready()
        if req.dimensions is not None and req.dimensions != self.embedder.dim:
            raise VerifierError(
                422,
                f"dimensions: {self.model_name} has {self.embedder.dim} dimensions and cannot "
                f"give {req.dimensions}; leave dimensions out",
                param="dimensions",
                code="unsupported_value",
            )
        unique = list(dict.fromkeys(texts))
        vectors, _ = await self.vectors(unique)
        tokens = await asyncio.to_thread(self.embedder.count_tokens, texts)
        row = {t: i for i, t in enumerate(unique)}
        data = []
        for index, text in enumerate(texts):
            vector = vectors[row[text]]
            if req.encoding_format == "base64":
                value = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                value = vector.tolist()
            data.append(Embedding(index=index, embedding=value))
        return EmbeddingResponse(
            data=data,
            model=self.model_name,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
