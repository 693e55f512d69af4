"""The processes of a session, from Linux's /proc: for tests that start a command in a session
of its own (``start_new_session=True``, so the session's id is its pid) and check what it
leaves running."""

from __future__ import annotations

import time
from pathlib import Path


def session_processes(sid: int) -> list[str]:
    """``pid state command`` of every live process in session ``sid`` (zombies excepted: they
    run nothing and are reaped by init once their parent has gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found.append(f"{entry.name} {state} {cmdline.strip()}")
    return found


def assert_nothing_left(sid: int, what: str, within_s: float = 10.0) -> None:
    """Wait up to ``within_s`` for every live process of session ``sid`` (``what`` started it)
    to end."""
    deadline = time.monotonic() + within_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind by {what}:\n" + "\n".join(left)
