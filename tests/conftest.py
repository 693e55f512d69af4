"""Project-wide test set-up: offline by construction, Redis for the tests that need it."""

from __future__ import annotations

import os
import uuid
from collections import Counter

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

# The longest modules that do not need the trained toy world, measured (`make test
# PYTEST_ARGS=--durations=100`; wall seconds each, in a loaded run), go first; the rest follow
# by number of tests, most first, as xdist's own `loadscope` order has it. That order alone
# sends these few-test modules last, where one of them can run alone while the other core
# idles. A module that needs the trained world (tests/experiments/test_toy_distill.py,
# tests/integrations/) must not come first: it would wait on the background build, past its
# tests' timeouts. The Makefile passes `--no-loadscope-reorder` so that xdist keeps this order.
SLOWEST_FIRST = (
    "tests/real/test_smollm2.py",  # ~380 s
    "tests/trainer/test_fsdp.py",  # ~95 s
    "tests/trainer/test_e2e.py",  # ~65 s
    "tests/toy/test_build.py",  # ~65 s
    "tests/test_demo.py",  # ~55 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    count = Counter(module(item) for item in items)
    items.sort(key=lambda item: (rank.get(module(item), len(rank)), -count[module(item)]))


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
