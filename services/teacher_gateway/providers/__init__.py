"""Teacher backends behind one interface (:class:`omniopd.gateway.providers.base.Provider`)."""

from omniopd.gateway.providers.base import (
    Chunk,
    ErrorKind,
    Message,
    Provider,
    ProviderError,
    SampleParams,
    SampleResult,
    create_provider,
)

__all__ = [
    "Chunk",
    "ErrorKind",
    "Message",
    "Provider",
    "ProviderError",
    "SampleParams",
    "SampleResult",
    "create_provider",
]
