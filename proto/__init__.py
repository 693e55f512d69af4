"""Generated gRPC stubs for ``proto/omniopd/v1/*.proto`` (``make proto`` writes them)."""
