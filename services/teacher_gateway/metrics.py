"""Prometheus metrics of one gateway, served on ``--metrics-port``.

Every family is ``omniopd_gateway_*`` and labelled by teacher name (never a key or a prompt).
Each gateway has its own registry, so several gateways in one process (tests) do not collide.
Per-teacher children are bound once, so counting on the request path is a few attribute
look-ups.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from omniopd.gateway.config import TeacherConfig

P = "omniopd_gateway"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _FallbackCollector(Collector):
    """``continuation_fallbacks_total``: read from the providers at scrape time.

    A chat provider in ``continuation: auto`` counts its switches to ``instruction`` in its
    public ``continuation_fallbacks`` attribute; providers without it count zero.
    """

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            f"{P}_continuation_fallbacks",
            "Switches of a chat teacher from prefill to instruction (continuation: auto)",
            labels=["teacher"],
        )
        for teacher, count in self._read().items():
            family.add_metric([teacher], count)
        yield family


class TeacherMetrics:
    """The children of every family for one teacher."""

    def __init__(self, m: GatewayMetrics, teacher: TeacherConfig) -> None:
        name = teacher.name
        self.name = name
        self.cache_hits = m.cache_hits.labels(name)
        self.cache_misses = m.cache_misses.labels(name)
        self.shared_flights = m.shared_flights.labels(name)
        self.backend_latency = m.backend_latency.labels(name)
        self.backend_calls = m.backend_calls.labels(name)
        self._backend_errors = m.backend_errors
        self._retries = m.retries
        self._waits = m.limit_waits
        self._wait_seconds = m.limit_wait_seconds
        self._rejections = m.limit_rejections
        self.input_tokens = m.tokens.labels(name, "input")
        self.output_tokens = m.tokens.labels(name, "output")
        self.spend = m.spend.labels(name) if teacher.prices else None
        self.prices = teacher.prices
        self.in_flight = m.in_flight.labels(name)

    def backend_error(self, kind: str) -> None:
        self._backend_errors.labels(self.name, kind).inc()

    def retry(self, kind: str) -> None:
        self._retries.labels(self.name, kind).inc()

    def limit_wait(self, limit: str, seconds: float) -> None:
        self._waits.labels(self.name, limit).inc()
        self._wait_seconds.labels(self.name, limit).observe(seconds)

    def limit_rejection(self, limit: str) -> None:
        self._rejections.labels(self.name, limit).inc()

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        """Tokens billed by one backend call, and their price when prices are configured."""
        self.input_tokens.inc(input_tokens)
        self.output_tokens.inc(output_tokens)
        if self.spend is not None and self.prices is not None:
            self.spend.inc(
                (
                    input_tokens * self.prices.input_per_million
                    + output_tokens * self.prices.output_per_million
                )
                / 1e6
            )


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        t = ("teacher",)

        def counter(name: str, doc: str, labels: tuple[str, ...] = t) -> Counter:
            return Counter(f"{P}_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets) -> Histogram:  # type: ignore[no-untyped-def]
            return Histogram(f"{P}_{name}", doc, labels, buckets=buckets, registry=r)

        self.requests = counter(
            "requests", "Sample requests by teacher and gRPC status", (*t, "code")
        )
        self.cache_hits = counter("cache_hits", "Replies served from the cache")
        self.cache_misses = counter("cache_misses", "Cache look-ups that found nothing")
        self.shared_flights = counter(
            "shared_flights", "Requests that shared an identical request's backend call"
        )
        self.cache_errors = counter(
            "cache_errors", "Cache operations that failed because Redis was unreachable", ()
        )
        self.backend_latency = histogram(
            "backend_latency_seconds", "Duration of successful backend calls", t, LATENCY_BUCKETS
        )
        self.backend_calls = counter("backend_calls", "Backend call attempts")
        self.backend_errors = counter(
            "backend_errors", "Failed backend call attempts by kind", (*t, "kind")
        )
        self.retries = counter(
            "retries", "Backend calls retried, by the failure's kind", (*t, "kind")
        )
        self.limit_waits = counter(
            "rate_limit_waits", "Requests that waited for a limit", (*t, "limit")
        )
        self.limit_wait_seconds = histogram(
            "rate_limit_wait_seconds", "Time spent waiting for a limit", (*t, "limit"), WAIT_BUCKETS
        )
        self.limit_rejections = counter(
            "rate_limit_rejections",
            "Requests refused with RESOURCE_EXHAUSTED by a limit",
            (*t, "limit"),
        )
        self.tokens = counter("tokens", "Tokens billed by backend calls", (*t, "direction"))
        self.spend = counter(
            "spend_usd", "US dollars spent on backend calls (teachers with prices)"
        )
        self.in_flight = Gauge(f"{P}_backend_in_flight", "Backend calls under way", t, registry=r)
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def teacher(self, teacher: TeacherConfig) -> TeacherMetrics:
        return TeacherMetrics(self, teacher)

    def count_request(self, teacher: str, code: str) -> None:
        """One finished request, by teacher and gRPC status name."""
        child = self._request_children.get((teacher, code))
        if child is None:
            child = self._request_children[(teacher, code)] = self.requests.labels(teacher, code)
        child.inc()

    def watch_fallbacks(self, read: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(_FallbackCollector(read))

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP in a thread; returns the bound port (``port`` may be 0)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
