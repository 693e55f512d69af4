"""Generate the Python stubs for ``proto/omniopd/v1/*.proto`` into ``omniopd.proto.v1``.

``make proto`` runs ``python -m omniopd.proto.generate``; ``--out DIR`` writes elsewhere (the sync
test regenerates into a temporary folder and compares). protoc names the generated imports after
the .proto path (``omniopd.v1``); they are rewritten to the installed package
(``omniopd.proto.v1``) so the stubs import from wherever the project is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE = "omniopd/v1"  # folder of the .proto files under PROTO_ROOT
PYTHON_PACKAGE = "omniopd.proto.v1"
DEFAULT_OUT = PROTO_ROOT / "v1"
INIT_TEXT = '"""Generated from proto/omniopd/v1/*.proto by `make proto`; do not edit."""\n'


def _include_dirs() -> list[str]:
    """protoc's own well-known types and googleapis' ``google/rpc/*.proto``."""
    import google.rpc.status_pb2
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(google.rpc.status_pb2.__file__).parents[2]
    return [str(PROTO_ROOT), str(well_known), str(googleapis)]


def _rewrite_imports(text: str) -> str:
    dotted = PROTO_PACKAGE.replace("/", ".")
    return re.sub(rf"\bfrom {re.escape(dotted)} import\b", f"from {PYTHON_PACKAGE} import", text)


def generate(out_dir: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and ``__init__.py`` into ``out_dir``."""
    from grpc_tools import protoc

    sources = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            *(f"-I{d}" for d in _include_dirs()),
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(s.relative_to(PROTO_ROOT)) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (its message is above)")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            dest = out_dir / src.name
            dest.write_text(_rewrite_imports(src.read_text()))
            written.append(dest)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT)
    return [init, *written]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
