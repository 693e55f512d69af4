"""A local stand-in for OpenAI-compatible servers. Not OpenAI, not vLLM.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, answered
from the toy generator (:mod:`.textgen`). Two chat behaviours, chosen by model name:

* hosted-like (``gpt-*``, ``o1``/``o3``/``o4``, ``gemini-*``): unknown request fields get
  OpenAI's 400 "Unrecognized request argument supplied: ...", so ``continue_final_message``
  is refused; a final assistant message is just history and the answer starts afresh.
* server-like (any other name, as vLLM or SGLang serve a local model): accepts
  ``continue_final_message=True, add_generation_prompt=False`` and then continues the final
  assistant message, returning only the new text.

``StandIn.max_choices`` caps the choices per request whatever ``n`` asks, as servers that
ignore ``n`` do (``transformers serve``).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .server import ServerThread, StandIn, receive
from .textgen import Generation, count_tokens, generate

HOSTED_PREFIXES = ("gpt-", "o1", "o3", "o4", "gemini-")
CHAT_FIELDS = {
    "model",
    "messages",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "user",
}
# vLLM's extra sampling and template fields, which OpenAI itself refuses.
SERVER_CHAT_FIELDS = CHAT_FIELDS | {
    "continue_final_message",
    "add_generation_prompt",
    "top_k",
    "min_p",
    "repetition_penalty",
    "chat_template_kwargs",
}
COMPLETION_FIELDS = {"model", "prompt", "n", "max_tokens", "temperature", "top_p", "stop", "seed"}
_counter = itertools.count(1)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status
    )


def _unauthorized(request: Request, state: StandIn) -> JSONResponse | None:
    """401 unless the bearer key matches (a stand-in without a key takes any request).

    The error echoes the key it was given, as a careless proxy might: providers must redact it.
    """
    presented = request.headers.get("authorization", "")
    if not state.api_key or presented == f"Bearer {state.api_key}":
        return None
    return _error(401, f"Incorrect API key provided: {presented!r}.", "invalid_api_key")


def _common(body: dict[str, Any], default_max: int) -> tuple[int, dict[str, Any]]:
    """``(n, generate() keyword arguments)`` from the request's sampling fields."""
    stop = body.get("stop") or ()
    seed = body.get("seed")
    return int(body.get("n") or 1), {
        "temperature": float(body.get("temperature", 1.0)),
        "seed": seed if seed is not None else f"request-{next(_counter)}",
        "max_tokens": int(
            body.get("max_completion_tokens") or body.get("max_tokens") or default_max
        ),
        "stop": [stop] if isinstance(stop, str) else list(stop),
    }


def _finish(out: Generation) -> str:
    return "length" if out.finish == "length" else "stop"


def _usage(prompt_tokens: int, outs: list[Generation]) -> dict[str, int]:
    completion = sum(o.output_tokens for o in outs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


async def chat_completions(request: Request) -> Response:
    state, body, early = await receive(request)
    if early is not None:
        return early
    if (denied := _unauthorized(request, state)) is not None:
        return denied
    model = str(body.get("model", ""))
    hosted = model.startswith(HOSTED_PREFIXES)
    extra = sorted(set(body) - (CHAT_FIELDS if hosted else SERVER_CHAT_FIELDS))
    if extra:
        return _error(400, f"Unrecognized request argument supplied: {extra[0]}")
    turns = body.get("messages") or []
    if not turns:
        return _error(400, "messages: must not be empty")
    prefix = ""
    if body.get("continue_final_message"):
        if body.get("add_generation_prompt", True):
            return _error(
                400, "continue_final_message and add_generation_prompt cannot both be true"
            )
        if turns[-1].get("role") != "assistant":
            return _error(400, "continue_final_message needs a final assistant message")
        prefix = turns[-1]["content"]
    key = next(t["content"] for t in turns if t.get("role") == "user").split("\n", 1)[0]
    n, kwargs = _common(body, default_max=256)
    outs = [
        generate(key, prefix, sample=i, **kwargs) for i in range(min(n, state.max_choices or n))
    ]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": o.text},
            "finish_reason": _finish(o),
            "logprobs": None,
        }
        for i, o in enumerate(outs)
    ]
    prompt_tokens = count_tokens(" ".join(str(t.get("content", "")) for t in turns))
    return JSONResponse(
        {
            "id": f"chatcmpl-standin-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": _usage(prompt_tokens, outs),
        }
    )


async def completions(request: Request) -> Response:
    state, body, early = await receive(request)
    if early is not None:
        return early
    if (denied := _unauthorized(request, state)) is not None:
        return denied
    extra = sorted(set(body) - COMPLETION_FIELDS)
    if extra:
        return _error(400, f"Unrecognized request argument supplied: {extra[0]}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return _error(400, "prompt: this stand-in takes one string")
    n, kwargs = _common(body, default_max=16)
    outs = [generate(prompt, "", sample=i, **kwargs) for i in range(min(n, state.max_choices or n))]
    choices = [
        {"index": i, "text": o.text, "finish_reason": _finish(o), "logprobs": None}
        for i, o in enumerate(outs)
    ]
    return JSONResponse(
        {
            "id": f"cmpl-standin-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": choices,
            "usage": _usage(count_tokens(prompt), outs),
        }
    )


async def models(request: Request) -> Response:
    state: StandIn = request.app.state.standin
    if (denied := _unauthorized(request, state)) is not None:
        return denied
    names = request.app.state.models
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "standin"} for m in names]
    return JSONResponse({"object": "list", "data": data})


def build_app(state: StandIn, model_names: tuple[str, ...] = ()) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.standin = state
    app.state.models = model_names
    return app


def start(
    api_key: str, model_names: tuple[str, ...] = (), **uvicorn_options: Any
) -> tuple[ServerThread, StandIn]:
    """Start a stand-in OpenAI-compatible server; the SDK's base URL is ``server.url + "/v1"``.

    ``uvicorn_options`` override uvicorn's settings (``timeout_keep_alive=...``).
    """
    state = StandIn(api_key=api_key)
    return ServerThread(build_app(state, model_names), **uvicorn_options).start(), state
