"""The import layers of the package (README, "Layout"), checked on the source with ``ast``.

- The **bottom** layer (settings, logging, paths, retries, Redis reconnection, child processes,
  answers and their evaluation) imports no other part of the project.
- The **parts** (the gateway, the verifier, the trainer, the toy worlds) import the bottom
  layer, the protobuf stubs, themselves, and of another part only its client
  (``omniopd.gateway.client``, ``omniopd.verifier.client``).
- A **client** imports the bottom layer, the stubs and its own part's wire types only, so that
  a user of it never loads the server.
- The **top** layer (the launcher, the demo, the reference generator, the integrations)
  composes the parts and may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import name -> folder (pyproject.toml's package-dir).
ROOTS = {
    "omniopd.gateway": REPO / "services" / "teacher_gateway",
    "omniopd.verifier": REPO / "services" / "verifier",
    "omniopd.trainer": REPO / "trainer",
    "omniopd.proto": REPO / "proto",
    "omniopd": REPO / "omniopd",
}
BOTTOM = {
    "omniopd",  # the package's __init__
    "omniopd.answers",
    "omniopd.evaluation",
    "omniopd.log",
    "omniopd.paths",
    "omniopd.pretrained",
    "omniopd.probe",
    "omniopd.processes",
    "omniopd.shared_redis",
    "omniopd.retry",
    "omniopd.settings",
}
PARTS = ("omniopd.gateway", "omniopd.verifier", "omniopd.trainer", "omniopd.toy")
TOP = ("omniopd.stack", "omniopd.demo", "omniopd.reference", "omniopd.integrations")
CLIENTS = {
    "omniopd.gateway.client": (),
    "omniopd.verifier.client": ("omniopd.verifier.protocol",),
}


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if "_pb2" in name:
                continue
            # omniopd/ holds no part's folder, but keep the first root that claims a module
            out.setdefault(name, path)
    return out


def imported(path: Path) -> set[str]:
    """The project modules a file imports (``from a import b`` counts as ``a``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "omniopd" or n.startswith("omniopd.")}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part_of(name: str) -> str | None:
    return next((p for p in PARTS if within(name, p)), None)


def allowed(importer: str, target: str) -> bool:
    if any(within(importer, t) for t in TOP):
        return True
    if within(target, "omniopd.proto") and importer != "omniopd":
        return True
    if importer in BOTTOM:
        return target in BOTTOM
    if importer in CLIENTS:
        return target in BOTTOM or target in CLIENTS[importer]
    part = part_of(importer)
    assert part is not None, f"{importer}: in no layer; add it to one (tests/test_layers.py)"
    if target in BOTTOM or within(target, part):
        return True
    return target in CLIENTS


def test_every_module_is_in_a_layer():
    for name in modules():
        if within(name, "omniopd.proto"):
            continue
        layers = [
            name in BOTTOM,
            any(within(name, t) for t in TOP),
            part_of(name) is not None,
        ]
        assert sum(layers) == 1, f"{name} is in {sum(layers)} layers"


def test_imports_respect_the_layers():
    crossings = []
    for name, path in sorted(modules().items()):
        if within(name, "omniopd.proto"):
            continue
        for target in sorted(imported(path)):
            if not allowed(name, target):
                crossings.append(f"{path.relative_to(REPO)}: {name} imports {target}")
    assert not crossings, "imports across a layer:\n" + "\n".join(crossings)


def test_the_checker_sees_a_crossing():
    """The rules refuse what they should (a check that cannot fail proves nothing)."""
    assert not allowed("omniopd.trainer.loop", "omniopd.gateway.core")
    assert not allowed("omniopd.retry", "omniopd.trainer.retry")
    assert not allowed("omniopd.gateway.client", "omniopd.gateway.core")
    assert not allowed("omniopd.trainer.baselines", "omniopd.toy.task")
    assert allowed("omniopd.trainer.scores", "omniopd.verifier.client")
    assert allowed("omniopd.stack", "omniopd.gateway.core")
