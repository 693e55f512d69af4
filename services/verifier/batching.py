"""Dynamic batching after the ``infinity`` embedding server: every request in flight puts a job
(its texts and a future) on one bounded queue; one worker drains the queue into batches of up to
``max_batch_texts`` texts, waiting at most ``max_wait_s`` for a batch to fill, and runs the model
on a thread of its own so the event loop (health checks, other requests) keeps answering.

The queue is bounded in texts: a job that would push it past ``max_queue_texts`` is refused at
once with :class:`QueueFull`, which the API answers with 429 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from omniopd.verifier.metrics import VerifierMetrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"the embedding queue holds {queued} texts; the limit is {limit}")
        self.queued = queued
        self.limit = limit


class BatcherStopped(Exception):
    pass


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future[np.ndarray] = field(repr=False)


class Batcher:
    """``await embed(texts)`` returns ``encode(texts)`` as (N, D) rows, batched with others."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        *,
        max_batch_texts: int,
        max_wait_s: float,
        max_queue_texts: int,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        self._encode = encode
        self.max_batch_texts = max_batch_texts
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        if self._worker is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-encode")
        self._worker = asyncio.create_task(self._run(), name="verifier-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for job in [*self._in_flight, *self._jobs]:
            if not job.future.done():
                job.future.set_exception(BatcherStopped("the verifier is shutting down"))
        self._in_flight = []
        self._jobs.clear()
        self._set_queued(0)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._worker is None or self._wakeup is None:
            raise BatcherStopped("the batching worker is not running")
        if not texts:
            raise ValueError("embed() needs at least one text")
        if self._queued_texts + len(texts) > self.max_queue_texts:
            raise QueueFull(self._queued_texts, self.max_queue_texts)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(texts, future))
        self._set_queued(self._queued_texts + len(texts))
        self._wakeup.set()
        return await future

    def _set_queued(self, n: int) -> None:
        self._queued_texts = n
        if self._metrics is not None:
            self._metrics.queue_texts.set(n)

    def _take_batch(self) -> list[_Job]:
        """Jobs from the front of the queue, at least one, up to ``max_batch_texts`` texts."""
        batch: list[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if batch and size + len(job.texts) > self.max_batch_texts:
                break
            self._jobs.popleft()
            self._set_queued(self._queued_texts - len(job.texts))
            if job.future.done():  # its request was cancelled while waiting
                continue
            batch.append(job)
            size += len(job.texts)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if not self._jobs:
                self._wakeup.clear()
                continue
            if self._queued_texts < self.max_batch_texts and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
            batch = self._in_flight = self._take_batch()
            if not batch:
                continue
            unique = list(dict.fromkeys(t for job in batch for t in job.texts))
            start = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, unique)
            except Exception as err:
                log.exception("encoding a batch of %d texts failed", len(unique))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                self._in_flight = []
                continue
            self._record(len(unique), len(batch), time.perf_counter() - start)
            row = {text: i for i, text in enumerate(unique)}
            for job in batch:
                if not job.future.done():
                    job.future.set_result(vectors[[row[t] for t in job.texts]])
            self._in_flight = []

    def _record(self, n_texts: int, n_jobs: int, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.batch_texts.observe(n_texts)
        self._metrics.batch_requests.observe(n_jobs)
        self._metrics.texts_embedded.inc(n_texts)
        self._metrics.encode_seconds.inc(seconds)
        if seconds > 0:
            self._metrics.texts_per_second.set(n_texts / seconds)
