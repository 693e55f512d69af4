"""Generated from proto/omniopd/v1/*.proto by `make proto`; do not edit."""
