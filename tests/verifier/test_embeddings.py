"""``POST /v1/embeddings`` through the official ``openai`` SDK, unchanged, against the real server.

The vectors must equal in-process ``SentenceTransformer.encode`` of the same texts to 1e-5, even
when the server batches them with other requests' texts (other lengths, so other padding).
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_sdk_default_base64(verifier, st_model):
    texts = ["sdk one: the answer is 42", "two", "a much longer third text " * 8]
    out = sdk(verifier.url).embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in out.data] == [0, 1, 2]
    assert out.model == MODEL
    assert out.usage.prompt_tokens > 0 and out.usage.total_tokens == out.usage.prompt_tokens
    got = np.array([d.embedding for d in out.data])
    np.testing.assert_allclose(got, st_model.encode(texts), atol=1e-5)


def test_openai_sdk_float_and_single_string(verifier, st_model):
    client = sdk(verifier.url)
    out = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="sdk single", encoding_format="float"
    )
    assert len(out.data) == 1
    np.testing.assert_allclose(out.data[0].embedding, st_model.encode(["sdk single"])[0], atol=1e-5)


def test_base64_is_float32_little_endian(verifier, st_model):
    import httpx

    body = {"input": ["raw base64"], "encoding_format": "base64"}
    item = httpx.post(f"{verifier.url}/v1/embeddings", json=body).json()["data"][0]
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, st_model.encode(["raw base64"])[0], atol=1e-5)


def test_openai_sdk_sees_errors(verifier, start_server):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        sdk(verifier.url).embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
        sdk(verifier.url).embeddings.create(model=MODEL, input="x", dimensions=64)
    locked = start_server(token="embeddings-token")
    with pytest.raises(openai.AuthenticationError):
        sdk(locked.url).embeddings.create(model=MODEL, input="x")
    assert (
        len(sdk(locked.url, "embeddings-token").embeddings.create(model=MODEL, input="x").data) == 1
    )


async def test_concurrent_requests_batched_together_get_unbatched_vectors(start_server, st_model):
    # A fresh server (empty cache) that waits 20 ms to fill each batch, so these requests share
    # encode calls and each text is padded to other requests' lengths.
    server = start_server(max_wait_ms=20.0)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    requests = [
        [f"batch {i} text {j} " + "word " * (i * 7 % 23 + j) for j in range(1 + i % 4)]
        for i in range(16)
    ]
    outs = await asyncio.gather(
        *(client.embeddings.create(model=MODEL, input=texts) for texts in requests)
    )
    await client.close()
    for texts, out in zip(requests, outs, strict=True):
        got = np.array([d.embedding for d in out.data])
        np.testing.assert_allclose(got, st_model.encode(texts), atol=1e-5)
    metrics = server.app.state.service.metrics
    merged = metrics.batch_requests.collect()[0].samples
    count = next(s.value for s in merged if s.name.endswith("_count"))
    total = next(s.value for s in merged if s.name.endswith("_sum"))
    assert total == 16 and count < 16, f"{total} requests went through {count} encode calls"
