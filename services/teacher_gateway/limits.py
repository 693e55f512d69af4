"""Per-teacher limits: requests, input and output tokens per minute, and concurrent calls.

Rates use the ``limits`` library's sliding-window-counter strategy over its memory storage, or
its Redis storage when ``REDIS_URL`` is set, so that every replica draws on one budget. Costs:
one unit per backend call (``Provider.backend_calls``), the request's input tokens (known before
the call), and output tokens (known only after it: a call is let through while the output budget
is not spent, then charged what it used, so the budget can be overrun by at most the calls in
flight when it ran out, as with the providers' own output-token limits).

The sliding-window counter is the library's approximation: it weighs the previous window's count
by the share of it still inside the last minute and floors the sum, so calls that straddle a
window boundary can be let one unit over a limit (a third call at ``requests_per_minute=2``, one
token at the token limits). Windows are aligned to the epoch minute.

Concurrency is a counting semaphore: ``asyncio.Semaphore`` in one process, or a lease set in
Redis (a sorted set of ``token -> expiry``, acquired and released by Lua scripts, leases
expire so a crashed replica cannot hold slots for ever).

Over a limit, a request waits up to the teacher's ``max_queue_wait_s`` (and never past its own
deadline), then fails with ``RESOURCE_EXHAUSTED`` carrying how long to wait before retrying.
If Redis goes away, limits fall back to this process's memory (logged once) rather than fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from limits import RateLimitItem, RateLimitItemPerSecond
from limits import storage as sync_storage
from limits import strategies as sync_strategies
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from omniopd.gateway.config import Limits, TeacherConfig
from omniopd.gateway.errors import GatewayError
from omniopd.shared_redis import Outage, connect, reconnect_once

GATEWAY_LOG = logging.getLogger("omniopd.gateway")  # where Redis outages are told

NAMESPACE = "omniopd"
MIN_POLL_S = 0.005
MAX_POLL_S = 0.25
SLOT_RETRY_HINT_S = 1.0  # retry hint when all concurrency slots stay busy


@dataclass(frozen=True, slots=True)
class Cost:
    requests: int
    input_tokens: int


@dataclass
class LimitHooks:
    """Callbacks for metrics: a wait (limit name, seconds) and a rejection (limit name)."""

    on_wait: Callable[[str, float], None] = lambda limit, seconds: None
    on_reject: Callable[[str], None] = lambda limit: None


def redis_storage_uri(url: str) -> str:
    """``redis://h:p/db`` -> the ``limits`` async URI (``async+redis://h:p/db``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"REDIS_URL: expected redis:// or rediss://, got {url!r}")
    return f"async+{scheme}://{rest}"


class RateStore:
    """The ``limits`` strategy over Redis (shared) or memory, with a memory fallback."""

    def __init__(self, redis_url: str | None = None, prefix: str = "omniopd:gateway:") -> None:
        # In memory, the synchronous strategy: its storage is a dict with nothing to await, and
        # its asyncio twin schedules an expiry task on every hit (a quarter of a millisecond
        # of the gateway's CPU per request at 64 in flight, measured with bench/gateway.py).
        self._memory = sync_strategies.SlidingWindowCounterRateLimiter(sync_storage.MemoryStorage())
        self._shared: SlidingWindowCounterRateLimiter | None = None
        if redis_url:
            from limits.aio.storage import RedisStorage

            storage = RedisStorage(
                redis_storage_uri(redis_url),
                implementation="redispy",
                key_prefix=f"{prefix}limits",
                wrap_exceptions=True,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=reconnect_once(),
            )
            self._shared = SlidingWindowCounterRateLimiter(storage)
        self._outage = Outage("rate limits", "limiting in this process only", log=GATEWAY_LOG)

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._shared is not None and self._outage.available():
            try:
                value = await getattr(self._shared, method)(*args, **kwargs)
            except (StorageError, OSError, TimeoutError) as err:
                self._outage.failed(err)
            else:
                self._outage.succeeded()
                return value
        return getattr(self._memory, method)(*args, **kwargs)

    async def test(self, item: RateLimitItem, key: str, cost: int) -> bool:
        return await self._call("test", item, key, cost=cost)

    async def hit(self, item: RateLimitItem, key: str, cost: int) -> bool:
        return await self._call("hit", item, key, cost=cost)

    async def window(self, item: RateLimitItem, key: str) -> tuple[float, int]:
        """``(seconds until some budget frees, budget remaining)``."""
        stats = await self._call("get_window_stats", item, key)
        return max(0.0, stats.reset_time - time.time()), stats.remaining


class Slots(Protocol):
    async def acquire(self, wait_s: float) -> str | None:
        """A lease token within ``wait_s`` seconds, or None."""
        ...

    async def release(self, token: str) -> None: ...


class MemorySlots:
    def __init__(self, capacity: int) -> None:
        self._sem = asyncio.Semaphore(capacity)

    async def acquire(self, wait_s: float) -> str | None:
        if not self._sem.locked():
            await self._sem.acquire()  # returns at once
            return "local"
        try:
            async with asyncio.timeout(max(0.0, wait_s)):
                await self._sem.acquire()
        except TimeoutError:
            return None
        return "local"

    async def release(self, token: str) -> None:
        self._sem.release()


# KEYS[1] = lease set; ARGV = now_ms, expiry_ms, capacity, token. Drops expired leases first.
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[1]) + 1000)
  return 1
end
return 0
"""


class RedisSlots:
    """Concurrency slots shared by replicas: leases in a Redis sorted set."""

    def __init__(self, url: str, key: str, capacity: int, lease_s: float) -> None:
        self._redis = connect(url, 0.5)
        self._key = key
        self._capacity = capacity
        self._lease_ms = int(lease_s * 1000)
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._fallback = MemorySlots(capacity)
        self._local: set[str] = set()  # tokens handed out by the fallback
        self._outage = Outage("concurrency slots", "limiting in this process only", log=GATEWAY_LOG)

    async def _try(self, token: str) -> bool:
        now_ms = int(time.time() * 1000)
        args = [now_ms, now_ms + self._lease_ms, self._capacity, token]
        return bool(await self._acquire(keys=[self._key], args=args))

    async def acquire(self, wait_s: float) -> str | None:
        import redis

        token = uuid.uuid4().hex
        give_up = time.monotonic() + max(0.0, wait_s)
        pause = MIN_POLL_S
        while self._outage.available():
            try:
                if await self._try(token):
                    self._outage.succeeded()
                    return token
            except (redis.RedisError, OSError, TimeoutError) as err:
                self._outage.failed(err)
                break
            left = give_up - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, MAX_POLL_S)
        if await self._fallback.acquire(max(0.0, give_up - time.monotonic())) is None:
            return None
        self._local.add(token)
        return token

    async def release(self, token: str) -> None:
        import redis

        if token in self._local:
            self._local.discard(token)
            await self._fallback.release(token)
            return
        try:
            await self._redis.zrem(self._key, token)
        except (redis.RedisError, OSError, TimeoutError) as err:  # the lease expires on its own
            self._outage.failed(err)

    async def aclose(self) -> None:
        await self._redis.aclose()


class TeacherLimiter:
    """All limits of one teacher. ``admit`` holds a concurrency slot for one backend call."""

    def __init__(
        self,
        teacher: TeacherConfig,
        store: RateStore,
        *,
        redis_url: str | None = None,
        prefix: str = "omniopd:gateway:",
        hooks: LimitHooks | None = None,
        window_s: int = 60,
    ) -> None:
        """``window_s``: the window of the per-minute limits (60; shorter only in tests)."""
        lim: Limits = teacher.limits
        self.name = teacher.name
        self.max_queue_wait_s = lim.max_queue_wait_s
        self._store = store
        self._hooks = hooks or LimitHooks()

        def per_minute(amount: int | None) -> RateLimitItem | None:
            if amount is None:
                return None
            return RateLimitItemPerSecond(amount, multiples=window_s, namespace=NAMESPACE)

        self._requests = per_minute(lim.requests_per_minute)
        self._input = per_minute(lim.input_tokens_per_minute)
        self._output = per_minute(lim.output_tokens_per_minute)
        self._slots: Slots | None = None
        if lim.max_concurrency is not None:
            if redis_url:
                lease = teacher.timeout_s + 30.0  # an attempt never outlives its timeout
                key = f"{prefix}slots:{teacher.name}"
                self._slots = RedisSlots(redis_url, key, lim.max_concurrency, lease)
            else:
                self._slots = MemorySlots(lim.max_concurrency)

    @property
    def unlimited(self) -> bool:
        return not (self._requests or self._input or self._output or self._slots)

    def check_cost(self, cost: Cost) -> None:
        """Refuse at once a request no budget could ever admit (bigger than a whole minute)."""
        for field, item, amount in (
            ("requests_per_minute", self._requests, cost.requests),
            ("input_tokens_per_minute", self._input, cost.input_tokens),
        ):
            if item is not None and amount > item.amount:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"messages: this request needs about {amount} of teacher {self.name!r} "
                    f"limits.{field}, above the whole budget of {item.amount}",
                )

    def _rates(self, cost: Cost) -> list[tuple[str, RateLimitItem, int]]:
        out = []
        if self._output is not None:
            out.append(("output_tokens", self._output, 1))  # only "not yet spent": a test
        if self._requests is not None:
            out.append(("requests", self._requests, cost.requests))
        if self._input is not None:
            out.append(("input_tokens", self._input, cost.input_tokens))
        return out

    async def _take_rates(self, cost: Cost, give_up: float) -> None:
        """Take the request's share of each rate, in turn, waiting where one is spent.

        A share taken stays taken while the next rate is waited for (one round trip per rate,
        not two); if the request is then refused, what it took is not given back, which errs on
        the side of staying under the provider's limits.
        """
        pending = self._rates(cost)
        started = time.monotonic()
        while pending:
            name, item, amount = pending[0]
            take = self._store.test if name == "output_tokens" else self._store.hit
            if await take(item, self.name, amount):
                pending.pop(0)
                continue
            reset_in, _ = await self._store.window(item, self.name)
            wait = max(MIN_POLL_S, reset_in)
            if wait > give_up - time.monotonic():
                self._hooks.on_reject(name)
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"teacher {self.name!r}: limits.{name}_per_minute ({item.amount}) is spent; "
                    f"waited {time.monotonic() - started:.2f} s of max_queue_wait_s "
                    f"{self.max_queue_wait_s:g}",
                    retry_after=wait,
                )
            await asyncio.sleep(min(wait, MAX_POLL_S))
        waited = time.monotonic() - started
        if waited > MIN_POLL_S:
            self._hooks.on_wait("rate", waited)

    @asynccontextmanager
    async def admit(self, cost: Cost, deadline: float) -> AsyncIterator[None]:
        """Wait (at most ``max_queue_wait_s``, never past ``deadline``) for room for one call."""
        give_up = min(time.monotonic() + self.max_queue_wait_s, deadline)
        token = None
        if self._slots is not None:
            started = time.monotonic()
            token = await self._slots.acquire(give_up - started)
            waited = time.monotonic() - started
            if token is None:
                self._hooks.on_reject("concurrency")
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"teacher {self.name!r}: all limits.max_concurrency slots stayed busy for "
                    f"{waited:.2f} s (max_queue_wait_s {self.max_queue_wait_s:g})",
                    retry_after=SLOT_RETRY_HINT_S,
                )
            if waited > MIN_POLL_S:
                self._hooks.on_wait("concurrency", waited)
        try:
            await self._take_rates(cost, give_up)
            yield
        finally:
            if token is not None:
                await self._slots.release(token)  # type: ignore[union-attr]

    async def charge_output(self, tokens: int) -> None:
        """Count ``tokens`` of output against the output budget, after the call."""
        await self._charge(self._output, tokens)

    async def charge_input(self, tokens: int) -> None:
        """Count input tokens the backend billed beyond the estimate admitted before the call."""
        await self._charge(self._input, tokens)

    async def _charge(self, item: RateLimitItem | None, tokens: int) -> None:
        if item is None or tokens <= 0:
            return
        if not await self._store.hit(item, self.name, min(tokens, item.amount)):
            # Over the budget: spend what is left, so the next calls wait for the window.
            _, remaining = await self._store.window(item, self.name)
            if remaining > 0:
                await self._store.hit(item, self.name, remaining)

    async def aclose(self) -> None:
        if isinstance(self._slots, RedisSlots):
            await self._slots.aclose()
