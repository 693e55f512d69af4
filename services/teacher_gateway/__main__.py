"""``python -m omniopd.gateway``: the same as ``omniopd-gateway``."""

from omniopd.gateway.cli import main

main()
