"""Where OmniOPD keeps its caches."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def omniopd_home() -> Path:
    """``$OMNIOPD_HOME``, default ``~/.cache/omniopd``: built toy worlds and other caches."""
    return Path(os.environ.get("OMNIOPD_HOME") or Path.home() / ".cache" / "omniopd").expanduser()


def make_readable(folder: Path) -> None:
    """Let every user read ``folder`` and what is in it (``save_pretrained`` writes safetensors
    as 0600): a container running as another user, or a second account, loads it too."""
    for path in [folder, *Path(folder).rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _may(st: os.stat_result, uid: int, gids: set[int], bits: tuple[int, int, int]) -> bool:
    """``bits``: the (owner, group, other) permission bits that must all be set, as the one
    class of the three that applies to ``uid`` (root may do anything)."""
    if uid == 0:
        return True
    need = bits[0] if st.st_uid == uid else bits[1] if st.st_gid in gids else bits[2]
    return st.st_mode & need == need


def _denied(path: Path, st: os.stat_result, uid: int) -> str:
    return (
        f"{path}: permission denied (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid};"
        f" this process runs as uid {uid})"
    )


READ = (0o400, 0o040, 0o004)
SEARCH = (0o100, 0o010, 0o001)
READ_SEARCH = (0o500, 0o050, 0o005)


def unreadable(path: Path, uid: int | None = None, gids: set[int] | None = None) -> str | None:
    """Why the user ``uid`` (default: this process's) cannot read the folder or file ``path``,
    or None if it can: the first folder on the way it may not enter, or the first file inside
    it may not read, with the mode and owner. A missing path is not this function's business
    (None), so the loader's own "not found" still speaks for it."""
    uid = os.geteuid() if uid is None else uid
    gids = set(os.getgroups()) | {os.getegid()} if gids is None else gids
    path = Path(path).absolute()
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except OSError:
            return None
        if not _may(st, uid, gids, SEARCH):
            return _denied(parent, st, uid)
    if not path.exists():
        return None
    files = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    for item in files:
        st = item.stat()
        bits = READ if item.is_file() else READ_SEARCH
        if not _may(st, uid, gids, bits):
            return _denied(item, st, uid)
    return None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing): one process at a time
    (the toy builder per world, the experiment's writers of the results page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
