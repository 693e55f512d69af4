"""Plain ASGI middleware: request metrics, and a body-size limit enforced before the body is read."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniopd.verifier.metrics import VerifierMetrics

KNOWN_ROUTES = frozenset(
    {"/v1/score", "/v1/embeddings", "/healthz", "/readyz", "/metrics", "/openapi.json"}
)


class MetricsMiddleware:
    """Counts every HTTP request by route and status and observes its latency."""

    def __init__(self, app: ASGIApp, metrics: VerifierMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route, str(status)).inc()


class BodyLimitMiddleware:
    """413 in the error envelope for a body past ``max_bytes``: before reading any of it when its
    Content-Length header says so, and at the first chunk past the limit for a chunked body
    (which has no length up front), without reading the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _body(self, got: str) -> bytes:
        message = (
            f"the request body has {got} bytes; the limit is {self.max_bytes} "
            "(OMNIOPD_VERIFIER_MAX_BODY_BYTES)"
        )
        error = {"message": message, "type": "invalid_request_error", "param": "body"}
        return json.dumps({"error": {**error, "code": "body_too_large"}}).encode()

    async def _reject(self, send: Send, got: str) -> None:
        body = self._body(got)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send, length.decode())
            return
        if length is None and b"transfer-encoding" in headers:
            await self._chunked(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body here, up to the limit (the app would read all of it anyway before
        parsing), then hand it on; refuse it at the first chunk past the limit."""
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break  # the client went away; the app sees that too
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(send, f"more than {self.max_bytes}")
                return
            if not message.get("more_body", False):
                break
        pending = iter(received)

        async def replay() -> Message:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)
