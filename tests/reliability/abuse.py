"""Shared by the bad-input and abuse tests: hand-written protobuf wire bytes, a real verifier
in this process, raw HTTP/1.1 over a socket, and scanning text for secrets.
"""

from __future__ import annotations

import base64
import functools
import http.client
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from omniopd.verifier.api import build_app
from omniopd.verifier.embedder import Embedder
from omniopd.verifier.server import ServerThread
from omniopd.verifier.serving import VerifierService
from tests.verifier.conftest import settings_for_tests

# -- protobuf wire format, by hand: what no well-behaved client library would send ------------

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """Base-128 varint; a negative value is sent as its 64-bit two's complement (10 bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def length_delimited(field: int, data: bytes) -> bytes:
    return key(field, LENGTH_DELIMITED) + varint(len(data)) + data


# -- the verifier, in this process --------------------------------------------------------------


@functools.cache
def embedder() -> Embedder:
    """The packaged all-MiniLM-L6-v2, loaded once per test process."""
    return Embedder().load()


@contextmanager
def verifier_server(**settings: Any) -> Iterator[ServerThread]:
    """A real verifier (uvicorn on 127.0.0.1, a free port) with these settings only."""
    service = VerifierService(settings_for_tests(**settings), embedder=embedder())
    with ServerThread(build_app(service)) as server:
        yield server


# -- raw HTTP/1.1 ---------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RawHTTP:
    """One HTTP/1.1 connection on which a test writes exactly the bytes it wants, when it wants,
    and reads the answer whenever it comes (``read`` raises ``TimeoutError`` if none does)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sent = 0  # body bytes written so far

    def head(self, method: str, path: str, headers: dict[str, str] | list[tuple[str, str]]) -> None:
        items = headers.items() if isinstance(headers, dict) else headers
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in items)]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def body(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def chunk(self, data: bytes) -> None:
        """One chunk of a ``Transfer-Encoding: chunked`` body (``b""`` ends the body)."""
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        self.sent += len(data)

    def read(self) -> RawResponse:
        response = http.client.HTTPResponse(self.sock)
        try:
            response.begin()
            body = response.read()
        except TimeoutError:
            raise TimeoutError("no HTTP response arrived in time") from None
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- secrets --------------------------------------------------------------------------------------


def encodings(secret: str) -> set[str]:
    """The forms in which a secret could slip out: as is, URL-encoded, hex, and base64 (both
    alphabets) at each of the three alignments it can have inside a longer base64 text (as in
    ``Basic base64(user:secret)``): the characters that depend on the secret's bytes only."""
    raw = secret.encode()
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        raw.hex(),
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift, mixed in ((0, 0), (1, 2), (2, 3)):
            text = encode(b"\0" * shift + raw).decode().rstrip("=")
            forms.add(text[mixed:-2])  # the last two may mix with what follows
    return forms


def find_leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """``(secret's first characters, excerpt)`` for every text holding a secret in any form."""
    forms = {form: s for s in secrets for form in encodings(s)}
    leaks = []
    for text in texts:
        for form, secret in forms.items():
            if (at := text.find(form)) >= 0:
                leaks.append((secret[:12] + "...", text[max(0, at - 60) : at + 20]))
    return leaks
