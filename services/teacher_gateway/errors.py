"""The gateway's one error type and its translation to gRPC status (rich, with retry info).

Every failure a client can see is a :class:`GatewayError`: a gRPC status code, a message that
names the field or teacher and the limit, and, where waiting helps, ``retry_after``. On the wire
it becomes a ``google.rpc.Status`` carrying a ``google.rpc.RetryInfo`` (the convention of
Google's AIP-193), as call trailers for ``SampleChunks`` and as the reply's ``error`` in a
stream. Reading them back is the client's part (``omniopd.gateway.client``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from omniopd.gateway.client import STATUS_DETAILS_KEY
from omniopd.gateway.providers.base import ErrorKind, ProviderError


@dataclass(eq=False)
class GatewayError(Exception):
    code: grpc.StatusCode
    message: str
    retry_after: float | None = None  # seconds; sent as google.rpc.RetryInfo

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status_proto(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.retry_after is not None:
            status.details.append(_retry_info(self.retry_after))
        return status

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((STATUS_DETAILS_KEY, self.to_status_proto().SerializeToString()),)


def _retry_info(seconds: float) -> any_pb2.Any:
    seconds = max(0.0, seconds)
    whole = math.floor(seconds)
    delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return packed


# A backend failure that survived the retries, as the client sees it.
_KIND_TO_CODE = {
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    # The backend refused a request the gateway accepted: the request is at fault.
    ErrorKind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    # The gateway's own key or configuration is at fault; retrying will not help.
    ErrorKind.AUTH: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.PREFILL_UNSUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
}

_KIND_TEXT = {
    ErrorKind.RATE_LIMITED: "the backend rate-limited the request",
    ErrorKind.UNAVAILABLE: "the backend is unavailable",
    ErrorKind.TIMEOUT: "the backend did not answer in time",
    ErrorKind.BAD_REQUEST: "the backend refused the request",
    ErrorKind.AUTH: "the backend refused the gateway's credentials",
    ErrorKind.PREFILL_UNSUPPORTED: (
        "the model refuses an assistant prefill; configure `continuation: instruction` or `auto`"
    ),
}


def from_provider_error(teacher: str, err: ProviderError, attempts: int) -> GatewayError:
    """Translate the last backend failure of a request (after ``attempts`` tries)."""
    http = f" (HTTP {err.status})" if err.status else ""
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
    text = f"teacher {teacher!r}: {_KIND_TEXT[err.kind]}{http}{tries}: {err.message}"
    retry_after = err.retry_after if err.kind is ErrorKind.RATE_LIMITED else None
    return GatewayError(_KIND_TO_CODE[err.kind], text, retry_after=retry_after)


def code_name(code: grpc.StatusCode) -> str:
    """``OK``, ``INVALID_ARGUMENT``, ... (the metrics label)."""
    return code.name
