"""The one distribution maps the design's folders onto ``omniopd.*`` import names."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _package_dirs() -> dict[str, Path]:
    """Every folder with an ``__init__.py`` under a mapped root, by its import name."""
    found: dict[str, Path] = {}
    for name, folder in SETUPTOOLS["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "__")) for part in rel.parts):
                continue
            dotted = ".".join((name, *rel.parts)) if rel.parts else name
            found[dotted] = init.parent
    return found


def test_every_package_folder_is_listed():
    listed = set(SETUPTOOLS["packages"])
    on_disk = set(_package_dirs())
    # A sub-package of a mapped root that is missing here would be absent from the wheel.
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - on_disk == set(), "listed packages with no __init__.py"


def test_import_names_map_to_the_design_folders():
    expected = {
        "omniopd.gateway": "services/teacher_gateway",
        "omniopd.verifier": "services/verifier",
        "omniopd.trainer": "trainer",
        "omniopd.proto": "proto",
    }
    for name, folder in expected.items():
        module = import_module(name)
        assert Path(module.__file__).parent == ROOT / folder


def test_console_scripts_point_at_real_functions():
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    for name in PYPROJECT["project"]["scripts"]:
        assert name in scripts, f"{name} is not installed; re-run `make setup`"
        assert callable(scripts[name].load())


def test_wheel_holds_every_mapped_package(tmp_path):
    """A regular (non-editable) build puts each folder under its import name."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("omniopd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for dotted, folder in _package_dirs().items():
        for source in folder.glob("*.py"):
            assert f"{dotted.replace('.', '/')}/{source.name}" in names


def test_the_slowest_first_modules_exist():
    """tests/conftest.py puts these first under xdist; a renamed module would silently lose it."""
    from tests.conftest import SLOWEST_FIRST

    root = Path(__file__).resolve().parents[1]
    assert [m for m in SLOWEST_FIRST if not (root / m).is_file()] == []
