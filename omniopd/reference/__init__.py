"""Reference pages generated from the code: ``python -m omniopd.reference [--check]``.

Writes ``docs/reference/*.md`` from the models that the processes themselves validate with:
``teachers.yaml`` (``omniopd.gateway.config``), the environment settings of the gateway, the
verifier and the trainer, the trainer's config (``TrainConfig``), the gRPC contract (the
``.proto`` file, comments included) and the verifier's OpenAPI schema. ``--check`` writes
nothing and exits 1 naming each page that differs from what the code says
(``tests/docs/test_reference.py`` runs it), so the pages cannot drift from the models.

The pages depend on the code only: defaults are the models' own (never this machine's
environment), and everything is listed in declaration order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from omniopd.reference.common import HEADER, OUT, ROOT
from omniopd.reference.config_pages import gateway_config_page, settings_page, trainer_config_page
from omniopd.reference.grpc_page import grpc_page
from omniopd.reference.openapi_page import verifier_api_page

PAGES: dict[str, Callable[[], str]] = {
    "gateway-config.md": gateway_config_page,
    "settings.md": settings_page,
    "trainer-config.md": trainer_config_page,
    "grpc-api.md": grpc_page,
    "verifier-api.md": verifier_api_page,
}


def render() -> dict[str, str]:
    """Every page's text, by file name."""
    return {name: make() for name, make in PAGES.items()}


def stale_pages(pages: dict[str, str], out: Path) -> list[str]:
    """The files of ``out`` that differ from ``pages``: missing or changed, and files once
    generated here for a page that no longer exists."""
    stale = [
        name
        for name, text in pages.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    generated = HEADER.split(" from ")[0]
    stale += [
        path.name
        for path in sorted(out.glob("*.md"))
        if path.name not in pages and path.read_text(encoding="utf-8").startswith(generated)
    ]
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omniopd.reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page differs"
    )
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"folder (default {OUT.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    pages = render()
    if args.check:
        if stale := stale_pages(pages, args.out):
            sys.exit(
                f"{args.out}: out of date (run `python -m omniopd.reference`): {', '.join(stale)}"
            )
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    for name in stale_pages(pages, args.out):  # what is left: pages that no longer exist
        (args.out / name).unlink()
        print(f"removed {args.out / name}")
