"""The services' Redis: one way to connect, one outage timer (the gateway's and the verifier's).

Redis is shared state for replicas (the gateway's cache, rate limits and concurrency slots; the
verifier's embedding cache), never a dependency: while it is unreachable each user serves from
its own process, and :class:`Outage` decides when to try Redis again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

RETRY_AFTER_S = 5.0  # how long to leave Redis alone after a failure


def reconnect_once() -> Any:
    """redis-py's ``retry`` setting: one immediate retry of a command whose connection was dead.

    Connections that sat idle in a client's pool while Redis restarted still look open, and the
    first command on each reads end-of-file. Clients built from a URL do not retry by default,
    so each such connection would fail one command and switch Redis off again for the service's
    back-off period, again and again after Redis is back. With this the command is sent once
    more on a fresh connection. Timeouts are not retried: a hung Redis is an outage.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def connect(url: str, timeout_s: float) -> Any:
    """An asyncio Redis client for ``url``: every command and connection bounded by
    ``timeout_s`` (a hung Redis is an outage, not a hung request), stale pooled connections
    retried once (:func:`reconnect_once`)."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=reconnect_once(),
    )


class Outage:
    """Log once, count, leave Redis alone a while, say when it is back.

    ``what`` names the user (``"the shared cache"``), ``fallback`` what it does meanwhile
    (``"serving without it"``); ``on_error`` counts each failure (a metric)."""

    def __init__(
        self,
        what: str,
        fallback: str,
        on_error: Callable[[], None] | None = None,
        log: logging.Logger | None = None,
        retry_after_s: float = RETRY_AFTER_S,
    ) -> None:
        self._what = what
        self._fallback = fallback
        self._on_error = on_error or (lambda: None)
        self._log = log or logging.getLogger("omniopd")
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._logged = False

    def available(self) -> bool:
        return self._down_until <= time.monotonic()

    def failed(self, err: BaseException) -> None:
        self._on_error()
        self._down_until = time.monotonic() + self.retry_after_s
        if not self._logged:
            self._logged = True
            self._log.warning(
                "Redis unreachable for %s (%s: %s): %s; retrying every %.0f s",
                self._what,
                type(err).__name__,
                err,
                self._fallback,
                self.retry_after_s,
            )

    def succeeded(self) -> None:
        if self._logged:
            self._logged = False
            self._log.warning("Redis reachable again: %s is back", self._what)
