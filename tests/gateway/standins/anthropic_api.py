"""A local stand-in for the Anthropic Messages API (``POST /v1/messages``). Not Anthropic.

It checks the API key, answers in the Messages wire format from the toy generator
(:mod:`.textgen`), and reproduces the two prefill behaviours of the real API by model name:
Claude models up to 4.5 continue a final assistant turn (and refuse one that ends in
whitespace, as the API does); Claude 4.6 and later answer any prefill with HTTP 400.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .server import ServerThread, StandIn, receive
from .textgen import count_tokens, generate

PREFILL_REFUSED = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
TRAILING_WHITESPACE = "messages: final assistant content cannot end with trailing whitespace"
FIELDS = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "stream",
}
STOP_REASONS = {"end": "end_turn", "length": "max_tokens", "stop": "stop_sequence"}
_counter = itertools.count(1)


def claude_version(model: str) -> tuple[int, int] | None:
    """``claude-haiku-4-5-20251001`` -> (4, 5); ``claude-3-5-sonnet-...`` -> (3, 5)."""
    numbers = [int(p) for p in model.split("-") if p.isdigit() and len(p) <= 2]
    if not numbers:
        return None
    return numbers[0], numbers[1] if len(numbers) > 1 else 0


def _error(status: int, kind: str, message: str) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status, headers={"request-id": f"req_standin_{uuid.uuid4().hex[:8]}"})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


async def messages(request: Request) -> Response:
    state, body, early = await receive(request)
    if early is not None:
        return early
    # The API takes the key as ``x-api-key`` or (what this SDK version sends) a bearer token.
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    presented = request.headers.get("x-api-key") or bearer
    if presented != state.api_key:
        # Echoes the key it was given, as a careless proxy might: providers must redact it.
        return _error(401, "authentication_error", f"invalid API key {presented!r}")
    extra = sorted(set(body) - FIELDS)
    if extra:
        return _error(400, "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted")
    model = body.get("model")
    turns = body.get("messages") or []
    max_tokens = body.get("max_tokens")
    if not isinstance(model, str) or not turns or not isinstance(max_tokens, int):
        return _error(400, "invalid_request_error", "model, messages and max_tokens are required")
    version = claude_version(model) or (0, 0)
    if "temperature" in body and "top_p" in body and version >= (4, 5):
        return _error(
            400,
            "invalid_request_error",
            "temperature and top_p cannot both be specified for this model. Please use only one.",
        )
    roles = [t.get("role") for t in turns]
    if any(r not in ("user", "assistant") for r in roles):
        return _error(400, "invalid_request_error", "messages: roles must be user or assistant")
    prefix = ""
    if roles[-1] == "assistant":
        prefix = _text(turns[-1].get("content", ""))
        if version >= (4, 6):
            return _error(400, "invalid_request_error", PREFILL_REFUSED)
        if prefix != prefix.rstrip():
            return _error(400, "invalid_request_error", TRAILING_WHITESPACE)
    first_user = next(_text(t["content"]) for t in turns if t["role"] == "user")
    key = first_user.split("\n", 1)[0]
    out = generate(
        key,
        prefix,
        temperature=float(body.get("temperature", 1.0)),
        seed=next(_counter),  # every call is a fresh sample, as with the real API
        max_tokens=max_tokens,
        stop=body.get("stop_sequences") or (),
    )
    system = body.get("system") or ""
    prompt_text = _text(system) + " " + " ".join(_text(t.get("content", "")) for t in turns)
    return JSONResponse(
        {
            "id": f"msg_standin_{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": out.text}],
            "stop_reason": STOP_REASONS[out.finish],
            "stop_sequence": out.stop_sequence,
            "usage": {
                "input_tokens": count_tokens(prompt_text),
                "output_tokens": out.output_tokens,
            },
        }
    )


def build_app(state: StandIn) -> Starlette:
    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.standin = state
    return app


def start(api_key: str) -> tuple[ServerThread, StandIn]:
    """Start a stand-in Messages server; its base URL is ``server.url``."""
    state = StandIn(api_key=api_key)
    return ServerThread(build_app(state)).start(), state
