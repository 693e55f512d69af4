"""omniopd.paths: readable model folders, and saying why one is not (by mode, not by trying:
the tests run as root, who may read anything)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from omniopd.paths import make_readable, unreadable


def folder_with(tmp_path: Path, mode: int) -> Path:
    model = tmp_path / "teacher"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "model.safetensors").chmod(mode)
    return model


def test_a_0600_file_of_another_user_is_named_with_its_mode(tmp_path):
    # pytest's own folders are 0700: the first thing another user meets is one of them.
    hidden = folder_with(tmp_path, 0o600)
    root_owned = hidden.stat().st_uid
    assert unreadable(hidden, uid=root_owned, gids=set()) is None  # its owner reads it
    problem = unreadable(hidden, uid=root_owned + 1000, gids=set())
    assert problem is not None and "permission denied" in problem and "mode 700" in problem
    # In a folder anyone may enter, the file itself is named.
    open_dir = Path(tempfile.mkdtemp(prefix="omniopd-paths-", dir="/tmp"))
    open_dir.chmod(0o755)
    try:
        model = folder_with(open_dir, 0o600)
        check_file(model, root_owned)
    finally:
        shutil.rmtree(open_dir)


def check_file(model: Path, root_owned: int) -> None:
    problem = unreadable(model, uid=root_owned + 1000, gids=set())
    assert problem == (
        f"{model / 'model.safetensors'}: permission denied (mode 600, owner uid {root_owned};"
        f" this process runs as uid {root_owned + 1000})"
    )
    make_readable(model)
    assert unreadable(model, uid=root_owned + 1000, gids=set()) is None
    assert (model / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_root_and_missing_paths(tmp_path):
    model = folder_with(tmp_path, 0o000)
    assert unreadable(model, uid=0, gids=set()) is None  # root reads anything
    # A missing path is the loader's to report ("not found")...
    assert unreadable(Path("/nonexistent-omniopd/model"), uid=1000, gids=set()) is None
    # ... unless a folder on the way, which exists, cannot be entered: that is the problem.
    assert "permission denied" in unreadable(tmp_path / "nothing", uid=1000, gids=set())
    assert unreadable(Path("HuggingFaceTB/SmolLM2-135M-Instruct"), uid=1000) is None  # hub name
