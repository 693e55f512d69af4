"""The gateway's request path, apart from gRPC: cache, single flight, limits, retries, metrics.

For one validated request:

1. look the reply up in the cache (unless the request asked for fresh samples);
2. on a miss, join an identical request already in flight here, or claim the key across
   replicas (``SET NX`` in Redis) and wait for the replica that holds it;
3. otherwise call the backend: each attempt first waits for the teacher's limits (concurrency
   slot, requests/min, input tokens/min, output budget), then calls the provider with what is
   left of its timeout; retryable failures are tried again with backoff (``retry.py``);
4. count tokens and spend, charge the output tokens, store the reply in the cache.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from omniopd.gateway.cache import (
    Cache,
    MemoryCache,
    RedisCache,
    SingleFlight,
    cache_key,
    teacher_fingerprint,
)
from omniopd.gateway.config import GatewayConfig, TeacherConfig
from omniopd.gateway.errors import GatewayError, from_provider_error
from omniopd.gateway.limits import Cost, LimitHooks, RateStore, TeacherLimiter
from omniopd.gateway.metrics import GatewayMetrics, TeacherMetrics
from omniopd.gateway.providers.base import (
    Provider,
    ProviderError,
    SampleParams,
    SampleResult,
    create_provider,
)
from omniopd.gateway.retry import (
    DEFAULT_BACKOFF,
    Backoff,
    RetriesExhausted,
    call_with_retries,
    with_timeout,
)
from omniopd.gateway.validation import ValidRequest

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "omniopd:gateway:"


class StartupError(RuntimeError):
    """A teacher that cannot be built or started; the message names it."""


@dataclass(frozen=True, slots=True)
class Sampled:
    result: SampleResult
    cached: bool  # from the cache, or shared with an identical request in flight


@dataclass(eq=False)
class Teacher:
    config: TeacherConfig
    provider: Provider
    limiter: TeacherLimiter
    metrics: TeacherMetrics
    fingerprint: str


class Gateway:
    """Teachers by name, and the one request path they all share."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        redis_url: str | None = None,
        redis_prefix: str = DEFAULT_PREFIX,
        metrics: GatewayMetrics | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or GatewayMetrics()
        self.redis_url = redis_url
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._cache: Cache
        if redis_url:
            self._cache = RedisCache(
                redis_url,
                prefix=redis_prefix,
                ttl_s=config.cache.ttl_s,
                on_error=self.metrics.cache_errors.inc,
            )
        else:
            self._cache = MemoryCache(config.cache.max_entries, config.cache.ttl_s)
        self._flights: SingleFlight[Sampled] = SingleFlight()
        store = RateStore(redis_url, redis_prefix)
        self.teachers: dict[str, Teacher] = {}
        for tc in config.teachers:
            tm = self.metrics.teacher(tc)
            hooks = LimitHooks(on_wait=tm.limit_wait, on_reject=tm.limit_rejection)
            limiter = TeacherLimiter(
                tc, store, redis_url=redis_url, prefix=redis_prefix, hooks=hooks
            )
            try:
                provider = create_provider(tc)
            except (RuntimeError, ValueError, ImportError) as err:
                raise StartupError(str(err)) from err
            self.teachers[tc.name] = Teacher(tc, provider, limiter, tm, teacher_fingerprint(tc))
        self.teacher_configs: Mapping[str, TeacherConfig] = {
            name: t.config for name, t in self.teachers.items()
        }
        self.metrics.watch_fallbacks(self._fallback_counts)

    def _fallback_counts(self) -> dict[str, int]:
        return {
            name: int(getattr(t.provider, "continuation_fallbacks", 0))
            for name, t in self.teachers.items()
        }

    def default_budget_s(self, teacher: str) -> float:
        """A request's time when its client set no deadline: queue wait, attempts and pauses."""
        c = self.teachers[teacher].config
        pauses = c.max_retries * self._backoff.cap_s
        return c.limits.max_queue_wait_s + (c.max_retries + 1) * c.timeout_s + pauses

    async def start(self) -> None:
        """Start every provider (load local weights, open clients) before serving."""
        for t in self.teachers.values():
            log.info(
                "starting teacher %r (%s, %s)", t.config.name, t.config.provider, t.config.model
            )
            try:
                await t.provider.start()
            except (RuntimeError, ValueError, OSError, ImportError) as err:
                where = f"teacher {t.config.name!r}"
                text = str(err) if str(err).startswith(where) else f"{where}: cannot start: {err}"
                raise StartupError(text) from err

    async def aclose(self) -> None:
        for t in self.teachers.values():
            try:
                await t.provider.aclose()
            finally:
                await t.limiter.aclose()
        await self._cache.aclose()

    async def sample(self, request: ValidRequest, deadline: float) -> Sampled:
        """The reply to one validated request, or :class:`GatewayError`.

        ``deadline`` is a ``time.monotonic()`` instant that nothing waits past.
        """
        teacher = self.teachers[request.teacher.name]
        params = request.params
        key = cache_key(teacher.fingerprint, params)
        if not request.use_cache:  # fresh samples: no look-up, no sharing; still stored
            result = await self._call(teacher, params, deadline)
            await self._cache.set(key, result)
            return Sampled(result, cached=False)
        hit = await self._cache.get(key)
        if hit is not None:
            teacher.metrics.cache_hits.inc()
            return Sampled(hit, cached=True)
        teacher.metrics.cache_misses.inc()
        sampled, joined = await self._flights.run(
            key, lambda: self._fill(teacher, params, key, deadline)
        )
        if joined:
            teacher.metrics.shared_flights.inc()
            return Sampled(sampled.result, cached=True)
        return sampled

    async def _fill(
        self, teacher: Teacher, params: SampleParams, key: str, deadline: float
    ) -> Sampled:
        """Fill one cache entry: the only caller in this process for ``key``."""
        owner = await self._cache.claim(key, ttl_s=max(1.0, deadline - time.monotonic()))
        if not owner:  # another replica is calling the backend for the same request
            other = await self._cache.wait(key, deadline)
            if other is not None:
                teacher.metrics.shared_flights.inc()
                return Sampled(other, cached=True)
            owner = await self._cache.claim(key, ttl_s=max(1.0, deadline - time.monotonic()))
        try:
            result = await self._call(teacher, params, deadline)
            await self._cache.set(key, result)
        finally:
            if owner:
                await self._cache.release(key)
        return Sampled(result, cached=False)

    async def _call(self, teacher: Teacher, params: SampleParams, deadline: float) -> SampleResult:
        """Call the backend (with limits and retries) and account for what it billed."""
        provider, limiter, m = teacher.provider, teacher.limiter, teacher.metrics
        cost = Cost(provider.backend_calls(params), provider.estimate_input_tokens(params))
        limiter.check_cost(cost)

        async def attempt() -> SampleResult:
            async with limiter.admit(cost, deadline):
                timeout = min(teacher.config.timeout_s, deadline - time.monotonic())
                m.backend_calls.inc()
                m.in_flight.inc()
                started = time.perf_counter()
                try:
                    result = await with_timeout(provider.sample(params, timeout=timeout), timeout)
                except ProviderError as err:
                    m.backend_error(err.kind.value)
                    raise
                finally:
                    m.in_flight.dec()
                m.backend_latency.observe(time.perf_counter() - started)
            return result

        def on_retry(err: ProviderError, pause: float) -> None:
            m.retry(err.kind.value)
            log.info(
                "teacher %r: %s (%s), retrying in %.2f s",
                teacher.config.name,
                err.kind.value,
                err.message,
                pause,
            )

        try:
            result = await call_with_retries(
                attempt,
                deadline=deadline,
                max_retries=teacher.config.max_retries,
                backoff=self._backoff,
                on_retry=on_retry,
                rng=self._rng,
            )
        except RetriesExhausted as failed:
            raise from_provider_error(teacher.config.name, failed.error, failed.attempts) from None
        m.usage(result.input_tokens, result.output_tokens)
        await limiter.charge_output(result.output_tokens)
        await limiter.charge_input(result.input_tokens - cost.input_tokens)
        return result


__all__ = ["Gateway", "GatewayError", "Sampled", "StartupError", "Teacher"]
