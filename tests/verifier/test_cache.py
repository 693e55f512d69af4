"""The embedding cache: bounded LRU in memory, float32 bytes in a real Redis, and Redis going away
meaning no cache rather than an outage."""

from __future__ import annotations

import hashlib
import logging
import socket

import httpx
import numpy as np
import pytest
import redis

from omniopd.verifier.cache import MemoryCache, RedisCache, cache_key

VECTORS = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], dtype=np.float32)


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"redis://127.0.0.1:{port}/0"


def test_cache_key_hashes_model_and_text():
    assert cache_key("m", "text") == hashlib.sha256(b"m\0text").hexdigest()
    assert cache_key("m", "text") != cache_key("n", "text")


async def test_memory_cache_is_a_bounded_lru():
    cache = MemoryCache(max_entries=2)
    await cache.put_many("m", ["a", "b"], VECTORS)
    assert (await cache.get_many("m", ["a"]))[0] is not None  # "a" is now the most recent
    await cache.put_many("m", ["c"], VECTORS[:1])
    a, b, c = await cache.get_many("m", ["a", "b", "c"])
    assert b is None and len(cache) == 2
    np.testing.assert_array_equal(a, VECTORS[0])
    np.testing.assert_array_equal(c, VECTORS[0])
    assert not a.flags.writeable
    assert await cache.get_many("other-model", ["a"]) == [None]


@pytest.mark.redis
async def test_redis_cache_stores_float32_bytes_under_the_prefix(redis_url, redis_prefix):
    errors = []
    cache = RedisCache(redis_url, redis_prefix, ttl_s=60, on_error=lambda: errors.append(1))
    await cache.put_many("m", ["a", "b"], VECTORS)
    got = await cache.get_many("m", ["b", "missing", "a"])
    np.testing.assert_array_equal(got[0], VECTORS[1])
    assert got[1] is None
    np.testing.assert_array_equal(got[2], VECTORS[0])
    await cache.close()
    raw = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}{cache_key('m', 'a')}"
    assert raw.get(key) == VECTORS[0].tobytes()
    assert 0 < raw.ttl(key) <= 60
    raw.close()
    assert errors == []


async def test_redis_down_is_a_miss_logged_once_and_counted(caplog):
    errors = []
    cache = RedisCache(closed_port_url(), "p:", on_error=lambda: errors.append(1))
    with caplog.at_level(logging.WARNING, logger="omniopd.verifier.cache"):
        assert await cache.get_many("m", ["a", "b"]) == [None, None]
        await cache.put_many("m", ["a", "b"], VECTORS)
        assert await cache.get_many("m", ["a"]) == [None]
    warnings = [
        r for r in caplog.records if "Redis unreachable for the embedding" in r.getMessage()
    ]
    assert len(warnings) == 1
    # After the first failure Redis is left alone for a while: one error, no timeouts paid.
    assert errors == [1]
    await cache.close()


def score_body(tag: str) -> dict:
    return {"groups": [{"drafts": [f"{tag} d1", f"{tag} d2"], "teacher": [f"{tag} t1"]}]}


@pytest.mark.redis
def test_servers_share_embeddings_through_redis(start_server, redis_url, redis_prefix):
    first = start_server(redis_url=redis_url, redis_prefix=redis_prefix, cache_size=0)
    out = httpx.post(f"{first.url}/v1/score", json=score_body("shared")).json()
    assert out["usage"] == {"texts": 3, "cache_hits": 0}
    raw = redis.Redis.from_url(redis_url)
    keys = list(raw.scan_iter(match=f"{redis_prefix}*"))
    assert len(keys) == 3
    assert all(len(raw.get(k)) == 384 * 4 for k in keys)  # 384 float32 values each
    raw.close()
    # A second replica with an empty memory finds every embedding in Redis.
    second = start_server(redis_url=redis_url, redis_prefix=redis_prefix, cache_size=0)
    again = httpx.post(f"{second.url}/v1/score", json=score_body("shared")).json()
    assert again["usage"] == {"texts": 3, "cache_hits": 3}
    np.testing.assert_allclose(
        again["groups"][0]["teacher_agreement"], out["groups"][0]["teacher_agreement"], atol=1e-6
    )


def test_a_server_whose_redis_is_down_still_scores(start_server):
    server = start_server(redis_url=closed_port_url(), cache_size=0)
    for tag in ("down 1", "down 2"):
        response = httpx.post(f"{server.url}/v1/score", json=score_body(tag))
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["cache_hits"] == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    line = next(
        x for x in metrics.splitlines() if x.startswith("omniopd_verifier_cache_errors_total")
    )
    assert float(line.split()[1]) >= 1


@pytest.mark.parametrize("size", [0, -1])
def test_memory_cache_needs_a_positive_size(size):
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        MemoryCache(size)
