"""``omniopd-verifier`` as a user starts it: a real process on a free port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

SCRIPT = shutil.which("omniopd-verifier", path=str(Path(sys.executable).parent))


def launch(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
    assert SCRIPT, "omniopd-verifier is not installed in this environment; run `make setup`"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNIOPD_VERIFIER_")}
    clean.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [SCRIPT, *args],
        env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, lines


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_bad_settings_fail_at_once_naming_the_variable():
    proc, lines = launch(env={"OMNIOPD_VERIFIER_ALPHA": "0"})
    assert proc.wait(timeout=60) == 1
    time.sleep(0.1)
    assert any("OMNIOPD_VERIFIER_ALPHA" in line for line in lines), lines


@pytest.mark.slow
def test_serves_on_a_free_port_with_a_token_it_never_logs():
    token = "cli-secret-token-123"
    proc, lines = launch(
        "--host", "127.0.0.1", "--port", "0", env={"OMNIOPD_VERIFIER_TOKEN": token}
    )
    try:
        found: list[str] = []

        def announced() -> bool:
            found[:] = [
                m.group(1) for line in lines if (m := re.search(r"verifier on (\S+)", line))
            ]
            return bool(found) or proc.poll() is not None

        wait_for(announced, 60, "the start-up line")
        assert found, "".join(lines)
        url = found[0]
        wait_for(lambda: httpx.get(f"{url}/readyz").is_success, 120, "/readyz")
        body = {"groups": [{"drafts": ["cli a", "cli b"], "teacher": ["cli a"]}]}
        assert httpx.post(f"{url}/v1/score", json=body).status_code == 401
        ok = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and len(ok.json()["groups"][0]["reward"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15).
    assert code in (0, -signal.SIGTERM)
    time.sleep(0.1)
    assert any("Application shutdown complete" in line for line in lines), "".join(lines)
    assert not any(token in line for line in lines)


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_process(tmp_path):
    proc, lines = launch("--port", "0", "--model", str(tmp_path / "no-model-here"))
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    assert code == 1
    assert any("failed to load" in line for line in lines), "".join(lines)
