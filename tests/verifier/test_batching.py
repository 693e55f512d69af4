"""Dynamic batching: the worker merges requests, never mixes up results, pushes back when full,
and encodes off the event loop."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import httpx
import numpy as np
import pytest

from omniopd.verifier.batching import Batcher, BatcherStopped, QueueFull
from omniopd.verifier.client import AsyncVerifierClient

# ------------------------------------------------ the Batcher itself, with a gated encoder


class GatedEncoder:
    """Maps each text to (len(text), first char code); blocks while the gate is closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_next = False

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("encoder broke")
        return np.array([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=np.float32)


def expected(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_requests_waiting_together_share_one_encode_call():
    encoder = GatedEncoder()
    batcher = Batcher(encoder, max_batch_texts=100, max_wait_s=0.0, max_queue_texts=100)
    batcher.start()
    first = asyncio.create_task(batcher.embed(["a1", "a22"]))
    await wait_until(lambda: len(encoder.calls) == 1)  # the worker is busy with `first`
    second = asyncio.create_task(batcher.embed(["b1", "a22"]))  # "a22" again: embedded once
    third = asyncio.create_task(batcher.embed(["c333"]))
    await wait_until(lambda: batcher.queued_texts == 3)
    encoder.gate.set()
    results = await asyncio.gather(first, second, third)
    assert encoder.calls == [["a1", "a22"], ["b1", "a22", "c333"]]
    for texts, got in zip((["a1", "a22"], ["b1", "a22"], ["c333"]), results, strict=True):
        np.testing.assert_array_equal(got, expected(texts))
    await batcher.stop()


async def test_a_full_queue_refuses_at_once_and_a_batch_respects_its_size():
    encoder = GatedEncoder()
    batcher = Batcher(encoder, max_batch_texts=3, max_wait_s=0.0, max_queue_texts=4)
    batcher.start()
    running = asyncio.create_task(batcher.embed(["x"]))
    await wait_until(lambda: len(encoder.calls) == 1)
    queued = [asyncio.create_task(batcher.embed([f"q{i}", f"r{i}"])) for i in range(2)]
    await wait_until(lambda: batcher.queued_texts == 4)
    with pytest.raises(QueueFull, match="holds 4 texts; the limit is 4"):
        await batcher.embed(["one too many"])
    encoder.gate.set()
    await asyncio.gather(running, *queued)
    # Two jobs of two texts do not fit one batch of three: two encode calls.
    assert encoder.calls[1:] == [["q0", "r0"], ["q1", "r1"]]
    await batcher.stop()


async def test_a_failed_encode_fails_its_batch_only():
    encoder = GatedEncoder()
    encoder.gate.set()
    encoder.fail_next = True
    batcher = Batcher(encoder, max_batch_texts=10, max_wait_s=0.0, max_queue_texts=10)
    batcher.start()
    with pytest.raises(RuntimeError, match="encoder broke"):
        await batcher.embed(["doomed"])
    np.testing.assert_array_equal(await batcher.embed(["fine"]), expected(["fine"]))
    await batcher.stop()


async def test_cancelled_requests_are_skipped_and_stop_fails_the_rest():
    encoder = GatedEncoder()
    batcher = Batcher(encoder, max_batch_texts=10, max_wait_s=0.0, max_queue_texts=10)
    batcher.start()
    busy = asyncio.create_task(batcher.embed(["busy"]))
    await wait_until(lambda: len(encoder.calls) == 1)
    cancelled = asyncio.create_task(batcher.embed(["gone"]))
    waiting = asyncio.create_task(batcher.embed(["kept"]))
    await wait_until(lambda: batcher.queued_texts == 2)
    cancelled.cancel()
    encoder.gate.set()
    await busy
    np.testing.assert_array_equal(await waiting, expected(["kept"]))
    assert ["gone"] not in encoder.calls and ["gone", "kept"] not in encoder.calls
    encoder.gate.clear()
    blocked = asyncio.create_task(batcher.embed(["blocked"]))
    await wait_until(lambda: len(encoder.calls) == 3)
    pending = asyncio.create_task(batcher.embed(["never"]))
    await wait_until(lambda: batcher.queued_texts == 1)
    encoder.gate.set()
    await batcher.stop()
    for task in (pending, blocked):  # queued, and in the model when the worker stopped
        with pytest.raises(BatcherStopped):
            await task


# ------------------------------------------------ through HTTP, with the real model


def request_groups(i: int) -> list[dict]:
    """Request i: 1-3 groups with K and M depending on i, every text its own."""
    return [
        {
            "id": f"r{i}g{g}",
            "drafts": [
                f"request {i} group {g} draft {k} " + "x" * (i + k) for k in range(1 + (i + g) % 4)
            ],
            "teacher": [
                f"request {i} group {g} teacher {j} is " + "y" * j for j in range(1 + (i * g) % 5)
            ],
        }
        for g in range(1 + i % 3)
    ]


async def test_concurrent_clients_get_exactly_what_they_get_alone(start_server):
    alone = start_server(cache_size=0)
    together = start_server(cache_size=0, max_wait_ms=10.0)
    n = 24
    async with AsyncVerifierClient(alone.url) as client:
        solo = [await client.score(request_groups(i), reward="logratio") for i in range(n)]
    async with AsyncVerifierClient(together.url) as client:
        crowd = await asyncio.gather(
            *(client.score(request_groups(i), reward="logratio") for i in range(n))
        )
    for a, b in zip(solo, crowd, strict=True):
        assert [g.id for g in a.groups] == [g.id for g in b.groups]
        for ga, gb in zip(a.groups, b.groups, strict=True):
            for field in ("similarity", "teacher_agreement", "student_agreement", "advantage"):
                np.testing.assert_allclose(getattr(gb, field), getattr(ga, field), atol=1e-5)
    batches = together.app.state.service.metrics.batch_requests.collect()[0].samples
    calls = next(s.value for s in batches if s.name.endswith("_count"))
    assert calls < n, "concurrent requests should share encode calls"


async def test_full_queue_answers_429_with_retry_after_and_the_client_retries(start_server):
    server = start_server(cache_size=0, max_texts=8, max_queue_texts=8, max_wait_ms=0.0)

    def body(tag: str, i: int) -> dict:
        return {
            "groups": [
                {
                    "drafts": [f"{tag} {i} d{k}" for k in range(4)],
                    "teacher": [f"{tag} {i} t{j}" for j in range(4)],
                }
            ]
        }

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/score", json=body("raw", i)) for i in range(16))
        )
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429}, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert "the limit is 8" in refused.json()["error"]["message"]

    async with AsyncVerifierClient(server.url, max_retries=20) as client:
        outs = await asyncio.gather(
            *(client.score(body("retried", i)["groups"]) for i in range(16))
        )
    assert all(len(o.groups[0].advantage) == 4 for o in outs)
    rejected = server.app.state.service.metrics.rejected.labels("queue_full")._value.get()
    assert rejected > sum(s == 429 for s in statuses), "the client must have met 429s and retried"


def test_health_answers_while_a_heavy_batch_encodes(start_server):
    server = start_server(cache_size=0)
    service = server.app.state.service
    texts = [f"heavy batch text number {i} with a few more words" for i in range(400)]
    result: dict = {}

    def heavy() -> None:
        result["response"] = httpx.post(
            f"{server.url}/v1/embeddings", json={"input": texts}, timeout=120
        )

    worker = threading.Thread(target=heavy)
    worker.start()
    time.sleep(0.3)  # the request is parsed, queued and in the model by now
    latencies = []
    while "response" not in result:
        start = time.perf_counter()
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        if "response" not in result:
            latencies.append(time.perf_counter() - start)
        time.sleep(0.05)
    worker.join()
    assert result["response"].status_code == 200
    assert service.metrics.texts_embedded._value.get() >= len(texts)
    assert len(latencies) >= 3, "the heavy request finished before the health checks could run"
    # A blocked event loop would hold every check until the batch ends (seconds); the median
    # ignores one scheduling hiccup on a busy machine.
    typical = statistics.median(latencies)
    assert typical < 0.5, f"/healthz took {typical:.3f} s (median) during the batch: {latencies}"
