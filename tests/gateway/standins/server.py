"""Running a stand-in: a Starlette app under uvicorn on 127.0.0.1, port 0, in its own thread.

Each server keeps a log of the requests it received (:attr:`StandIn.requests`) and a queue of
faults to inject (:meth:`StandIn.inject`): the next requests, in order, are answered with an
HTTP error (optionally carrying ``retry-after``), answered late, answered with a body that is
not JSON, or have their connection dropped after the response headers, as a crashing proxy
would.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or before) answering it."""

    status: int | None = None  # answer with this HTTP error
    retry_after: float | None = None  # ... carrying this retry-after header (seconds)
    retry_after_ms: float | None = None  # ... or OpenAI's retry-after-ms header
    delay: float = 0.0  # wait this long first (then answer normally, or with ``status``)
    drop: bool = False  # send headers, then close the connection without a body
    garbage: bool = False  # answer 200 with a body that is not JSON (a confused proxy)


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    peer: str = ""  # the client's address and port: a new port is a new connection


@dataclass
class StandIn:
    """State shared by a stand-in's handlers (``request.app.state.standin``)."""

    api_key: str
    requests: list[Received] = field(default_factory=list)
    faults: collections.deque[Fault] = field(default_factory=collections.deque)
    # Answer at most this many choices per request, whatever ``n`` asks (None: all of them).
    max_choices: int | None = None

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.max_choices = None


class DroppedConnection(Response):
    """Promise a body, send headers, then fail: uvicorn closes the connection mid-response."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        raise ConnectionAbortedError("stand-in: dropping the connection as injected")


async def receive(request: Request) -> tuple[StandIn, dict[str, Any], Response | None]:
    """Log the request and apply the next injected fault: ``(state, body, early response)``."""
    state: StandIn = request.app.state.standin
    try:
        body = await request.json()
    except json.JSONDecodeError:
        body = {}
    peer = f"{request.client.host}:{request.client.port}" if request.client else ""
    state.requests.append(Received(request.url.path, body, dict(request.headers), peer))
    fault = state.faults.popleft() if state.faults else None
    if fault is None:
        return state, body, None
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.drop:
        return state, body, DroppedConnection()
    if fault.garbage:
        return state, body, Response("<html>502 Bad Gateway</html>", 200, media_type="text/html")
    if fault.status is None:
        return state, body, None
    headers = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
    return state, body, JSONResponse(error_body(fault.status), fault.status, headers=headers)


def error_body(status: int) -> dict[str, Any]:
    """An error envelope both SDKs can read (Anthropic's ``type`` plus OpenAI's fields)."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": f"stand-in: injected HTTP {status}", "code": None},
    }


class ServerThread:
    """A Starlette app served by uvicorn on 127.0.0.1:0 in a daemon thread.

    ``uvicorn_options`` override uvicorn's settings (``timeout_keep_alive=...``).
    """

    def __init__(self, app: Starlette, **uvicorn_options: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,  # leave the test process's logging as the tests configured it
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=0.5,  # injected delays may still be sleeping at the end
            **uvicorn_options,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="standin", daemon=True)
        self.port = 0

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("stand-in server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
