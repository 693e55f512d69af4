"""``omniopd-stack`` with real processes on real sockets (port 0), serving the tiny toy world.

Two stacks start side by side (their start-ups overlap); one loses a child to SIGKILL, the other
gets a Ctrl-C. Each must stop everything it started and say why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from omniopd.proto.v1 import gateway_pb2 as pb
from omniopd.proto.v1 import gateway_pb2_grpc as pb_grpc
from omniopd.stack import ServiceDied, Stack, StackConfig, StackError, main

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from omniopd.toy import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


def write_teachers(folder: Path, model: Path | str) -> Path:
    path = folder / "teachers.yaml"
    teacher = {"name": "toy", "provider": "hf", "model": str(model), "max_tokens": 16}
    path.write_text(yaml.safe_dump({"teachers": [teacher]}))
    return path


class Up:
    """``omniopd-stack up`` as a user runs it; its output is read on a thread."""

    def __init__(self, teachers: Path) -> None:
        command = [sys.executable, "-m", "omniopd.stack", "up", "--config", str(teachers)]
        command += ["--threads", "1", "--verifier-device", "cpu", "--quiet"]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def addresses(self, timeout: float = 240) -> dict:
        """The JSON line printed once every service is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if line.startswith("{"):
                    return json.loads(line)
            time.sleep(0.1)
        raise AssertionError(f"omniopd-stack up never became ready:\n{self.output[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def two_stacks(tiny_world, tmp_path_factory):
    teachers = write_teachers(tmp_path_factory.mktemp("stacks"), tiny_world.teacher)
    stacks = [Up(teachers), Up(teachers)]
    try:
        yield [(up, up.addresses()) for up in stacks]
    finally:
        for up in stacks:
            up.stop()


def test_up_serves_and_a_killed_child_brings_the_stack_down(two_stacks):
    up, addresses = two_stacks[0]
    assert "omniopd-stack: up in" in up.output
    with grpc.insecure_channel(addresses["gateway"]) as channel:
        listed = pb_grpc.TeacherGatewayStub(channel).ListTeachers(pb.ListTeachersRequest())
    assert [t.name for t in listed.teachers] == ["toy"]
    score = httpx.post(
        f"{addresses['verifier']}/v1/score",
        json={
            "groups": [{"id": "f", "drafts": ["12+3=15", "12+3=16"], "teacher": ["12+3=15"]}],
            "metric": "lexical",
        },
        timeout=30,
    )
    assert score.status_code == 200, score.text
    pids = addresses["pids"]
    if addresses["redis"] is not None and "redis" in pids:  # redis-server is on PATH here
        import redis

        assert redis.Redis.from_url(addresses["redis"]).ping()

    os.kill(pids["verifier"], signal.SIGKILL)
    assert up.proc.wait(timeout=60) == 1
    message = f"verifier (pid {pids['verifier']}) was killed by SIGKILL while the stack was up"
    assert message in up.output
    assert wait_gone(list(pids.values())), up.output[-3000:]


def test_ctrl_c_stops_every_child(two_stacks):
    up, addresses = two_stacks[1]
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0, up.output[-3000:]
    assert "SIGINT: stopping every service" in up.output
    assert wait_gone(list(addresses["pids"].values())), up.output[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{addresses['verifier']}/healthz", timeout=5)


def test_a_service_that_fails_at_start_is_named_with_its_output(tmp_path):
    teachers = write_teachers(tmp_path, tmp_path / "no-such-model")
    stack = Stack(StackConfig(teachers=teachers, redis=False, env=ONE_THREAD))
    with pytest.raises(ServiceDied) as err:
        stack.start()
    text = str(err.value)
    assert text.startswith("gateway (pid ") and "exited with code 1 while starting" in text
    assert "toy" in text  # the gateway's own last lines name the teacher that failed
    assert all(child.exited() for child in stack.children.values())  # the verifier too


def test_a_missing_config_fails_before_starting_anything(tmp_path, capsys):
    assert main(["up", "--config", str(tmp_path / "teachers.yaml"), "--no-redis"]) == 1
    assert "teachers.yaml does not exist" in capsys.readouterr().err
    with pytest.raises(StackError, match="does not exist"):
        Stack(StackConfig(teachers=tmp_path / "nope.yaml")).start()
