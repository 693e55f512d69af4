"""``python -m omniopd.probe``, the containers' healthchecks, against live services."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omniopd.probe", *args], capture_output=True, text=True, timeout=60
    )


def test_grpc_probe_sees_the_gateway_serving(stack, closed_port):
    assert probe("grpc", stack.gateway).returncode == 0
    assert probe("grpc", stack.gateway, "--service", "omniopd.v1.TeacherGateway").returncode == 0
    down = probe("grpc", f"127.0.0.1:{closed_port}", "--timeout", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_http_probe_sees_the_verifier_ready(stack, closed_port):
    assert probe("http", f"{stack.verifier}/readyz").returncode == 0
    missing = probe("http", f"{stack.verifier}/no-such-route")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    down = probe("http", f"http://127.0.0.1:{closed_port}/readyz")
    assert down.returncode == 1 and "not ready" in down.stderr


def test_file_probe_checks_the_age(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert probe("file", str(metrics)).returncode == 1  # not there yet
    metrics.write_text('{"step": 1}\n')
    assert probe("file", str(metrics), "--max-age", "60").returncode == 0
    old = time.time() - 120
    os.utime(metrics, (old, old))
    stale = probe("file", str(metrics), "--max-age", "60")
    assert stale.returncode == 1 and "last written" in stale.stderr
