"""Prometheus metrics of one verifier instance, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class VerifierMetrics:
    """Requests, latency, batch sizes, queue depth, cache hits and encoding throughput."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "omniopd_verifier_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "omniopd_verifier_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_texts = Histogram(
            "omniopd_verifier_batch_texts",
            "texts per encode call of the batching worker",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "omniopd_verifier_batch_requests",
            "requests merged into one encode call",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_texts = Gauge(
            "omniopd_verifier_queue_texts", "texts waiting to be embedded", registry=r
        )
        self.texts_embedded = Counter(
            "omniopd_verifier_texts_embedded", "texts run through the model", registry=r
        )
        self.encode_seconds = Counter(
            "omniopd_verifier_encode_seconds", "time spent in the model", registry=r
        )
        self.texts_per_second = Gauge(
            "omniopd_verifier_texts_per_second",
            "encoding throughput of the last batch",
            registry=r,
        )
        self.cache_hits = Counter(
            "omniopd_verifier_cache_hits", "embeddings found in the cache", registry=r
        )
        self.cache_misses = Counter(
            "omniopd_verifier_cache_misses", "embeddings not in the cache", registry=r
        )
        self.cache_errors = Counter(
            "omniopd_verifier_cache_errors", "cache (Redis) calls that failed", registry=r
        )
        self.rejected = Counter(
            "omniopd_verifier_rejected", "requests refused by back-pressure", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
