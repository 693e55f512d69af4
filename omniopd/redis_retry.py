"""The Redis clients' retry setting, shared by the gateway and the verifier."""

from __future__ import annotations

from typing import Any


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
