"""Redis outages: log once, count, leave Redis alone a while, say when it is back.

The cache, the rate limits and the concurrency slots each keep one :class:`Outage`; while it is
open they serve from this process alone instead of failing requests or waiting on timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("omniopd.gateway")


def reconnect_once() -> Any:
    """redis-py's ``retry`` setting: one immediate retry of a command whose connection was dead.

    Connections that sat idle in a client's pool while Redis restarted still look open, and the
    first command on each reads end-of-file. Clients built from a URL do not retry by default,
    so each such connection would fail one command and reopen the outage for
    :attr:`Outage.RETRY_AFTER_S`, again and again after Redis is back. With this the command is
    sent once more on a fresh connection. Timeouts are not retried: a hung Redis is an outage.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


class Outage:
    RETRY_AFTER_S = 5.0  # how long to leave Redis alone after a failure

    def __init__(self, what: str, fallback: str, on_error: Callable[[], None] = lambda: None):
        self._what = what  # e.g. "the shared cache"
        self._fallback = fallback  # e.g. "serving without it"
        self._on_error = on_error
        self._down_until = 0.0
        self._logged = False

    def available(self) -> bool:
        return self._down_until <= time.monotonic()

    def failed(self, err: BaseException) -> None:
        self._on_error()
        self._down_until = time.monotonic() + self.RETRY_AFTER_S
        if not self._logged:
            self._logged = True
            log.warning(
                "Redis unreachable for %s (%s: %s): %s; retrying every %.0f s",
                self._what,
                type(err).__name__,
                err,
                self._fallback,
                self.RETRY_AFTER_S,
            )

    def succeeded(self) -> None:
        if self._logged:
            self._logged = False
            log.warning("Redis reachable again: %s is back", self._what)
