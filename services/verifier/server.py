"""Serving the app with uvicorn: in the foreground (the CLI) or on a thread (tests, benchmarks).

Both bind the socket first, so port 0 gives a free port whose number is known before serving.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

STARTUP_TIMEOUT_S = 60.0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def create_server(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server for ``app`` and its bound socket (``port=0``: any free port)."""
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10
    )
    return uvicorn.Server(config), bind(host, port)


class ServerThread:
    """``with ServerThread(app) as s: httpx.get(s.url + "/healthz")`` on 127.0.0.1, a free port."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server, self.sock = create_server(app, host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def app(self) -> FastAPI:
        return self.server.config.app

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the verifier server stopped while starting; see the log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the verifier server did not start in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
