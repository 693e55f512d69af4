"""One logging configuration for every OmniOPD process.

Plain text by default, JSON lines with ``--log-format json``. Every line passes through
:func:`redact` last, after the message, its arguments and any traceback are formatted, so a value
read from an environment variable whose name ends in ``_API_KEY`` or ``_TOKEN`` can never be
written, whichever logger (ours, gRPC's, uvicorn's, an SDK's) produced the line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

SECRET_SUFFIXES = ("_API_KEY", "_TOKEN")
# Shorter values are not credentials, and masking them would garble ordinary text.
MIN_SECRET_LEN = 4
REDACTED = "[REDACTED]"
LOG_FORMATS = ("text", "json")

_extra_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on (for secrets not read from the environment)."""
    if value and len(value) >= MIN_SECRET_LEN:
        _extra_secrets.add(value)


def secret_values() -> list[str]:
    """Current secret values, longest first so a secret containing another is masked whole.

    The environment is read on every call: a key exported after start-up is still masked.
    """
    found = {
        v
        for k, v in os.environ.items()
        if k.upper().endswith(SECRET_SUFFIXES) and v and len(v) >= MIN_SECRET_LEN
    }
    found |= _extra_secrets
    return sorted(found, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


def configure_logging(level: str | int = "INFO", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (replacing any other), for this process."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # A library configured earlier in the process (uvicorn's default config, say) may have given
    # its loggers their own handlers: those would write around the redacting formatter. Send
    # every record through the one root handler instead.
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.propagate = True
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every request at INFO: a trainer's verifier calls (and a launcher's health
    # probes) would drown the lines that matter. They stay visible at DEBUG.
    logging.getLogger("httpx").setLevel(logging.WARNING if root.level > logging.DEBUG else 0)
    logging.captureWarnings(True)


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """The flags every OmniOPD command takes: ``--log-level`` and ``--log-format``."""
    parser.add_argument("--log-level", default=os.environ.get("OMNIOPD_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("OMNIOPD_LOG_FORMAT", "text"),
        help="text lines (default) or JSON lines",
    )


def configure_from_args(args: argparse.Namespace) -> None:
    configure_logging(args.log_level, args.log_format)
