"""Redis outages: log once, count, leave Redis alone a while, say when it is back.

The cache, the rate limits and the concurrency slots each keep one :class:`Outage`; while it is
open they serve from this process alone instead of failing requests or waiting on timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("omniopd.gateway")


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
