"""One request's ``n`` calls at once, for backends that answer one sample per call.

:func:`gather_all` cancels the rest at the first failure; :func:`settle`, for backends billed
per call, lets every call finish and keeps what arrived (:class:`Leftovers`) for the retry.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Hashable, Sequence
from typing import Generic, TypeVar

from omniopd.gateway.providers.base import ProviderError
from omniopd.gateway.providers.http_errors import worst_error

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


async def gather_all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once; the first failure cancels the rest and is raised as itself."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(c)) for c in calls]
    except BaseExceptionGroup as group_err:
        first = group_err.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _as_coroutine(call: Awaitable[T]) -> T:
    return await call


async def settle(calls: Sequence[Awaitable[T]]) -> tuple[list[T], ProviderError | None]:
    """Run ``calls`` at once and let every one finish: ``(answers, the error to report)``.

    For backends billed per call: a failure does not cancel the calls still running, so what
    they return is kept (see :class:`Leftovers`) rather than paid for and thrown away. Any
    exception other than :class:`ProviderError` is a bug and is raised as itself.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    answers: list[T] = []
    errors: list[ProviderError] = []
    for result in results:
        if isinstance(result, ProviderError):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.append(result)
    return answers, worst_error(errors)


class Leftovers(Generic[K, T]):
    """Answers already paid for by an attempt that failed as a whole, kept for its retry.

    When one of ``n`` per-sample calls fails, the core retries the request; the samples that
    did arrive are kept here under the request's key, and the retry asks only for the rest.
    Bounded: the oldest entries go first (a request whose retries never come is forgotten).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[K, list[T]] = OrderedDict()

    def take(self, key: K) -> list[T]:
        return self._kept.pop(key, [])

    def count(self, key: K) -> int:
        return len(self._kept.get(key, ()))

    def keep(self, key: K, answers: list[T]) -> None:
        if not answers:
            return
        self._kept[key] = answers
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)
