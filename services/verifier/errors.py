"""Errors the verifier answers with, all in one envelope ``{"error": {message, type, param, code}}``
(the shape OpenAI's and vLLM's APIs use)."""

from __future__ import annotations

from collections.abc import Sequence

from omniopd.verifier.protocol import ErrorDetail, ErrorResponse


class VerifierError(Exception):
    """An answer other than 2xx, with the field it is about (``param``) where there is one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def envelope(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers


def too_large(what: str, got: int, limit: int, param: str, setting: str) -> VerifierError:
    """413 naming the field, the size, the limit and the setting that raises it."""
    return VerifierError(
        413,
        f"{param}: {got} {what}; the limit is {limit} (OMNIOPD_VERIFIER_{setting.upper()})",
        param=param,
        code=f"too_many_{what.replace(' ', '_')}",
    )


def param_path(loc: Sequence[str | int]) -> str:
    """``("body", "groups", 0, "drafts")`` -> ``"groups[0].drafts"``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"
