"""The reply cache: never pay twice for a request the gateway has already answered.

A key is the teacher's fingerprint (provider, model and the settings that change its output)
plus everything in the request that changes the samples (messages, partial answer, n,
max_tokens, temperature, top_p, stop, seed). Values are the backend's :class:`SampleResult`.

- :class:`MemoryCache`: one process, bounded LRU with a TTL (the default).
- :class:`RedisCache`: shared by every replica pointed at the same ``REDIS_URL``. Redis going
  away never fails a request: the cache then reads as empty, writes are dropped, the outage is
  logged once and counted, and Redis is tried again a few seconds later.
- :class:`SingleFlight`: identical requests in flight at once in one process share one backend
  call (the ``singleflight`` idea of Go's groupcache). Across replicas the same is done with a
  short Redis claim (``SET NX``) that the others wait on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from omniopd.gateway.config import TeacherConfig
from omniopd.gateway.providers.base import Chunk, SampleParams, SampleResult
from omniopd.shared_redis import Outage, connect

GATEWAY_LOG = logging.getLogger("omniopd.gateway")  # where Redis outages are told

T = TypeVar("T")

# Settings of a teacher that change what it samples; the rest (limits, prices, retries) do not.
FINGERPRINT_FIELDS = ("provider", "model", "base_url", "tokenizer", "dtype", "continuation")


def teacher_fingerprint(teacher: TeacherConfig) -> str:
    fields: dict[str, Any] = {f: getattr(teacher, f) for f in FINGERPRINT_FIELDS}
    fields["options"] = teacher.options
    return _digest(fields)


def cache_key(fingerprint: str, params: SampleParams) -> str:
    return _digest(
        [
            fingerprint,
            [[m.role, m.content] for m in params.messages],
            params.partial_answer,
            params.n,
            params.max_tokens,
            params.temperature,
            params.top_p,
            list(params.stop),
            params.seed,
        ]
    )


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_result(result: SampleResult) -> bytes:
    return json.dumps(
        {
            "chunks": [[c.text, c.finish_reason, c.output_tokens] for c in result.chunks],
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "continuation": result.continuation,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def decode_result(data: bytes) -> SampleResult:
    raw = json.loads(data)
    return SampleResult(
        chunks=tuple(Chunk(text, reason, tokens) for text, reason, tokens in raw["chunks"]),
        input_tokens=raw["input_tokens"],
        output_tokens=raw["output_tokens"],
        continuation=raw["continuation"],
    )


class Cache(Protocol):
    shared: bool  # True when other replicas see the same entries

    async def get(self, key: str) -> SampleResult | None: ...

    async def set(self, key: str, result: SampleResult) -> None: ...

    async def claim(self, key: str, ttl_s: float) -> bool:
        """Become the one replica that calls the backend for ``key`` (True), or not."""
        ...

    async def release(self, key: str) -> None: ...

    async def wait(self, key: str, deadline: float) -> SampleResult | None:
        """Wait for another replica's claim on ``key``: its result, or None when it gave up."""
        ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """Bounded LRU with a time-to-live, for one process."""

    shared = False

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SampleResult]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> SampleResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, result = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result

    async def set(self, key: str, result: SampleResult) -> None:
        self._entries[key] = (self._clock() + self.ttl_s, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def claim(self, key: str, ttl_s: float) -> bool:
        return True  # one process: SingleFlight already made this caller the only one

    async def release(self, key: str) -> None:
        return None

    async def wait(self, key: str, deadline: float) -> SampleResult | None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()


class RedisCache:
    """The cache in Redis, shared by replicas; degrades to "no cache" while Redis is away."""

    shared = True
    POLL_S = (0.005, 0.1)  # first and longest pause between looks at another replica's claim

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ttl_s: float,
        timeout_s: float = 0.5,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = connect(url, timeout_s)
        self._prefix = f"{prefix}cache:"
        self._ttl_ms = int(ttl_s * 1000)
        self._outage = Outage("the shared cache", "serving without it", on_error, GATEWAY_LOG)

    async def _do(self, op: Callable[[], Awaitable[Any]], default: Any) -> Any:
        import redis

        if not self._outage.available():
            return default
        try:
            value = await op()
        except (TimeoutError, redis.RedisError, OSError) as err:
            self._outage.failed(err)
            return default
        self._outage.succeeded()
        return value

    async def get(self, key: str) -> SampleResult | None:
        data = await self._do(lambda: self._redis.get(self._prefix + key), None)
        return None if data is None else decode_result(data)

    async def set(self, key: str, result: SampleResult) -> None:
        data = encode_result(result)
        await self._do(lambda: self._redis.set(self._prefix + key, data, px=self._ttl_ms), None)

    async def claim(self, key: str, ttl_s: float) -> bool:
        ttl_ms = max(1, int(ttl_s * 1000))
        got = await self._do(
            lambda: self._redis.set(f"{self._prefix}claim:{key}", b"1", nx=True, px=ttl_ms), True
        )
        return bool(got)

    async def release(self, key: str) -> None:
        await self._do(lambda: self._redis.delete(f"{self._prefix}claim:{key}"), None)

    async def wait(self, key: str, deadline: float) -> SampleResult | None:
        pause = self.POLL_S[0]
        while time.monotonic() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, self.POLL_S[1])
            result = await self.get(key)
            if result is not None:
                return result
            claimed = await self._do(
                lambda: self._redis.exists(f"{self._prefix}claim:{key}"), False
            )
            if not claimed:
                # The claim is gone: the other replica stored its result (look once more) or
                # failed; either way, stop waiting.
                return await self.get(key)
        return None

    async def aclose(self) -> None:
        await self._redis.aclose()


class SingleFlight(Generic[T]):
    """Run one call per key at a time; callers that arrive while it runs share its outcome.

    The call runs as its own task, so a caller that gives up (cancelled, deadline) does not
    cancel the backend call the others wait on; its result still reaches the cache.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(value, joined)``: ``joined`` is True when another caller's call was shared."""
        task = self._flights.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.ensure_future(call())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), joined

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every caller left
