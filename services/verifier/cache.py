"""Embedding cache keyed by (model, sha256(text)): a bounded in-memory LRU, or Redis.

Redis stores each vector as float32 bytes under ``<prefix><sha256(model \\0 text)>``. A Redis
error never fails a request: it is logged once per outage, counted, and the request goes on as a
cache miss; after an error Redis is left alone for a few seconds so an outage costs no timeouts.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from omniopd.shared_redis import Outage, connect

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 0.5


def cache_key(model: str, text: str) -> str:
    """Hex sha256 of the model name and the text, so keys have a fixed length."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


class EmbeddingCache(Protocol):
    async def get_many(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """One float32 vector per text, or None where it is not cached."""
        ...

    async def put_many(self, model: str, texts: Sequence[str], vectors_ND: np.ndarray) -> None: ...

    async def close(self) -> None: ...


class NoCache:
    async def get_many(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        return [None] * len(texts)

    async def put_many(self, model: str, texts: Sequence[str], vectors_ND: np.ndarray) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """Least-recently-used, at most ``max_entries`` vectors (read-only float32 copies)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def get_many(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for text in texts:
            key = cache_key(model, text)
            vector = self._data.get(key)
            if vector is not None:
                self._data.move_to_end(key)
            out.append(vector)
        return out

    async def put_many(self, model: str, texts: Sequence[str], vectors_ND: np.ndarray) -> None:
        for text, vector in zip(texts, vectors_ND, strict=True):
            stored = np.array(vector, dtype=np.float32)
            stored.flags.writeable = False
            key = cache_key(model, text)
            self._data[key] = stored
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Vectors in Redis (shared by replicas); any Redis failure degrades to a miss."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: int = 0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._client = connect(url, REDIS_TIMEOUT_S)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._outage = Outage("the embedding cache", "going on without it", on_error, log)

    def _key(self, model: str, text: str) -> str:
        return f"{self.prefix}{cache_key(model, text)}"

    async def get_many(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        if not texts or not self._outage.available():
            return [None] * len(texts)
        import redis

        try:
            raw = await self._client.mget([self._key(model, t) for t in texts])
        except (redis.RedisError, OSError, TimeoutError) as err:
            self._outage.failed(err)
            return [None] * len(texts)
        self._outage.succeeded()
        return [
            None if value is None or len(value) % 4 else np.frombuffer(value, dtype=np.float32)
            for value in raw
        ]

    async def put_many(self, model: str, texts: Sequence[str], vectors_ND: np.ndarray) -> None:
        if not texts or not self._outage.available():
            return
        import redis

        pipe = self._client.pipeline(transaction=False)
        for text, vector in zip(texts, vectors_ND, strict=True):
            value = np.asarray(vector, dtype=np.float32).tobytes()
            pipe.set(self._key(model, text), value, ex=self.ttl_s or None)
        try:
            await pipe.execute()
        except (redis.RedisError, OSError, TimeoutError) as err:
            self._outage.failed(err)
            return
        self._outage.succeeded()

    async def close(self) -> None:
        await self._client.aclose()
