"""Project-wide test set-up: offline by construction, Redis for the tests that need it."""

from __future__ import annotations

import os
import uuid

import pytest

# No model hub here, and none needed: every model is built locally or shipped by a package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist every worker, its subprocesses and `make test`'s background toy build share
# the cores: one OpenMP thread per process, since threads spinning on busy cores cost more than
# they give (beside two other trainers, tests/trainer/test_e2e.py and tests/experiments/ took
# 7-10 % less time and 9 % less CPU with it). Torch reads the variable once, on its import.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
REDIS_HINT = (
    f"these tests need Redis at {REDIS_TEST_URL} (set REDIS_TEST_URL to use another). Start one "
    'with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""'
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis URL; fails (never skips) with how to start one when there is none."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.fail(f"{REDIS_HINT} ({err})", pytrace=False)
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture
def redis_prefix(redis_url: str):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"omniopd-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
