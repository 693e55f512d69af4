"""Child processes for the launcher (``omniopd.stack``) and the tests' fault drills.

A :class:`Child` runs in its own process group, so a Ctrl-C at the terminal reaches the
launcher only and the launcher stops its children in order. On Linux a child also gets SIGTERM
if the thread that started it dies (``PR_SET_PDEATHSIG``), so a launcher killed with SIGKILL
leaves nothing behind. Its stdout and stderr are read together on a thread; the last lines are
kept for the message when it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger("omniopd.stack")

TAIL_LINES = 200  # output lines kept per child, for the message when it dies

_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - a libc without dlopen(NULL)
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: its own process group, SIGTERM on our death."""
    os.setpgid(0, 0)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One child process; its stdout and stderr are read together on a thread."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        log_file: IO[str] | None = None,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._log_file = log_file
        self._echo = echo
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            preexec_fn=_die_with_parent,  # only setpgid and prctl run between fork and exec
        )
        self._reader = threading.Thread(target=self._read, name=f"stack-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            if self._echo is not None:
                self._echo(self.name, line)

    def search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        for line in list(self.lines):
            if m := pattern.search(line):
                return m
        return None

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def exit_reason(self) -> str:
        code = self.proc.poll()
        if code is None:
            return f"(pid {self.pid}) is still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"(pid {self.pid}) was killed by {name}"
        return f"(pid {self.pid}) exited with code {code}"

    def tail_text(self, n: int = 20) -> str:
        self._reader.join(timeout=2)  # the last lines of a dead child are still in the pipe
        lines = list(self.lines)[-n:]
        if not lines:
            return "; it printed nothing"
        return "; its last output:\n" + "\n".join(f"    {line}" for line in lines)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        """Whether it has exited within ``timeout`` seconds; SIGKILL otherwise."""
        try:
            self.proc.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in time: killing it", self.name, self.pid)
            self.proc.kill()
            self.proc.wait()
            return False


def console_script(name: str, module: str) -> list[str]:
    """The console script beside this interpreter, else ``python -c`` calling its main()."""
    path = Path(sys.executable).parent / name
    if path.is_file():
        return [str(path)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def free_port(host: str) -> int:
    """A port that was free a moment ago (for children that cannot bind port 0 themselves)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
