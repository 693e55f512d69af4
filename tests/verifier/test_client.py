"""The typed clients against the real server: dicts or models in, typed responses out, errors
with the server's envelope, bearer tokens, retries that wait what ``Retry-After`` says."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pydantic
import pytest

from omniopd.verifier.client import (
    AsyncVerifierClient,
    Group,
    ScoreResponse,
    VerifierClient,
    VerifierHTTPError,
)
from omniopd.verifier.embedder import Embedder

HEAVY = ("torch", "transformers", "sentence_transformers", "fastapi", "uvicorn", "starlette")


def test_client_imports_with_httpx_and_pydantic_only():
    code = (
        "import json, sys\n"
        "import omniopd.verifier\n"
        "from omniopd.verifier.client import VerifierClient, AsyncVerifierClient\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(proc.stdout) == [], f"importing the client loaded {proc.stdout}"


def test_sync_client_takes_dicts_and_models(verifier, st_model):
    groups = [
        {"id": "as-dict", "drafts": ["client x = 4", "client x = 5"], "teacher": ["x is 4"]},
        Group(id="as-model", drafts=["client y"], teacher=["client y", "z"]),
    ]
    with VerifierClient(verifier.url) as client:
        assert client.ready()
        out = client.score(groups, metric="embedding", prior="uniform", alpha=4.0, reward="prob")
        vectors = client.embed(["client embed", "two"])
    assert isinstance(out, ScoreResponse)
    assert [g.id for g in out.groups] == ["as-dict", "as-model"]
    assert (out.prior, out.alpha) == ("uniform", 4.0)
    assert len(out.groups[0].advantage) == 2 and len(out.groups[1].similarity[0]) == 2
    np.testing.assert_allclose(vectors, st_model.encode(["client embed", "two"]), atol=1e-5)


def test_client_validates_before_sending():
    with VerifierClient("http://127.0.0.1:9") as client, pytest.raises(pydantic.ValidationError):
        client.score([{"drafts": [], "teacher": ["t"]}])


def test_server_errors_raise_with_the_envelope(start_server):
    small = start_server(max_groups=1)
    with VerifierClient(small.url) as client, pytest.raises(VerifierHTTPError) as caught:
        client.score([{"drafts": ["a"], "teacher": ["b"]}] * 2, metric="lexical")
    assert caught.value.status == 413
    assert caught.value.error is not None and caught.value.error.param == "groups"
    assert "the limit is 1" in str(caught.value)


def test_bearer_token(start_server):
    server = start_server(token="client-token")
    groups = [{"drafts": ["a"], "teacher": ["b"]}]
    with VerifierClient(server.url) as anonymous, pytest.raises(VerifierHTTPError) as caught:
        anonymous.score(groups, metric="lexical")
    assert caught.value.status == 401
    with VerifierClient(server.url, token="client-token") as client:
        assert len(client.score(groups, metric="lexical").groups) == 1


def test_503_is_retried_after_the_servers_retry_after(start_server, tmp_path):
    # A model that cannot load: the server answers 503 with Retry-After: 1, for good.
    broken = start_server(embedder_=Embedder(str(tmp_path / "missing")))
    with VerifierClient(broken.url, max_retries=2) as client:
        start = time.monotonic()
        with pytest.raises(VerifierHTTPError) as caught:
            client.score([{"drafts": ["a"], "teacher": ["b"]}])
        elapsed = time.monotonic() - start
    assert caught.value.status == 503
    assert 2.0 <= elapsed < 10, f"two retries 1 s apart took {elapsed:.2f} s"


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def test_async_client_retries_a_refused_connection_then_raises():
    url = f"http://127.0.0.1:{closed_port()}"
    async with AsyncVerifierClient(url, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(httpx.ConnectError):
            await client.score([{"drafts": ["a"], "teacher": ["b"]}])


async def test_async_client_scores_and_embeds(verifier, st_model):
    async with AsyncVerifierClient(verifier.url) as client:
        assert await client.ready()
        out = await client.score(
            [{"drafts": ["async a", "async b"], "teacher": ["async a"]}], reward="logratio"
        )
        vectors = await client.embed("async single")
    assert out.reward == "logratio" and len(out.groups[0].reward) == 2
    np.testing.assert_allclose(vectors, st_model.encode(["async single"]), atol=1e-5)
