"""Where OmniOPD keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def omniopd_home() -> Path:
    """``$OMNIOPD_HOME``, default ``~/.cache/omniopd``: built toy worlds and other caches."""
    return Path(os.environ.get("OMNIOPD_HOME") or Path.home() / ".cache" / "omniopd").expanduser()
