"""deploy/smoke.sh, the parts that run without a Docker engine (the script itself needs one and
is run by hand: ``make compose-smoke``, docs/deploy.md).

- the script parses (``bash -n``, and shellcheck where it is installed), and ``make
  compose-smoke`` runs it without being part of ``make test``;
- the Compose override, env file and teachers file it writes resolve, on top of each Compose
  file, to the stack it checks (Compose's own ``config``, no engine needed);
- its checks (deploy/smoke_checks.py) pass against a real gateway and verifier, started as
  processes here, and fail on a run that did not train; its summary line says what failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_compose import COMPOSE, HOST_COMPOSE, compose_command, compose_variables

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "smoke.sh"
CHECKS = ROOT / "deploy" / "smoke_checks.py"


def load_checks():
    spec = importlib.util.spec_from_file_location("smoke_checks", CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke_checks = load_checks()


# -- the script and its make target -----------------------------------------------------------


def test_the_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def make_prerequisites(target: str, makefile: str) -> set[str]:
    """Every target ``target`` depends on, directly or not (variables left unexpanded)."""
    rules: dict[str, list[str]] = {}
    for line in makefile.splitlines():
        if m := re.match(r"^([A-Za-z0-9_.$()/-]+):(?!=)\s*(.*)$", line):
            rules.setdefault(m.group(1), []).extend(m.group(2).split())
    seen: set[str] = set()
    todo = [target]
    while todo:
        for dep in rules.get(todo.pop(), []):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_make_compose_smoke_runs_the_script_and_make_test_does_not():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", makefile, re.M).group(1)
    assert "compose-smoke" in phony.replace("\\\n", " ").split()
    assert "compose-smoke" not in make_prerequisites("test", makefile)
    proc = subprocess.run(["make", "-n", "compose-smoke"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "bash deploy/smoke.sh" in proc.stdout


def test_compose_v1_waits_for_slow_container_creation():
    """With vfs a container's creation copies its whole image; Compose v1's default 60 s for an
    engine call was not enough for two at once (``Read timed out``, a real run of the script)."""
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f'unset COMPOSE_HTTP_TIMEOUT; source "{SCRIPT}"; echo $COMPOSE_HTTP_TIMEOUT',
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 300


# -- the files it writes, resolved by Compose ---------------------------------------------------


def written_files(tmp_path: Path, world: Path) -> Path:
    """The files deploy/smoke.sh writes for a world, by its own function (the script sourced)."""
    scratch = tmp_path / "smoke"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    env["SMOKE_DIR"] = str(scratch)
    proc = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" && write_stack_files "{world}"'],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return scratch


@pytest.mark.parametrize("compose_file", [HOST_COMPOSE, COMPOSE], ids=["host", "bridge"])
def test_the_stack_it_starts_is_the_one_it_checks(tmp_path, compose_file):
    world = tmp_path / "world"
    scratch = written_files(tmp_path, world)
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    proc = subprocess.run(
        [
            *compose_command(),
            "--project-directory", str(ROOT),
            "-f", str(compose_file),
            "-f", str(scratch / "compose.smoke.yml"),
            "--env-file", str(scratch / "smoke.env"),
            "config",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"redis", "gateway", "verifier"} <= set(services)  # `up` with no profile: these
    assert services["redis"]["image"] == "redis:7-alpine"  # the registry's, unless offline
    gateway, verifier = services["gateway"], services["verifier"]
    assert gateway["command"][gateway["command"].index("--port") + 1] == "50151"
    assert verifier["command"][verifier["command"].index("--port") + 1] == "8190"
    assert gateway["healthcheck"]["test"][-1] == "127.0.0.1:50151"
    assert verifier["healthcheck"]["test"][-1] == "http://127.0.0.1:8190/readyz"
    for service in (gateway, verifier):
        assert service["environment"]["HF_HUB_OFFLINE"] == "1"
    mounts = {}
    for volume in gateway["volumes"]:
        if isinstance(volume, dict):
            mounts[volume["target"]] = (str(volume.get("source")), volume.get("read_only"))
        else:
            source, target, *mode = str(volume).split(":")
            mounts[target] = (source, mode == ["ro"])
    assert mounts[str(world)] == (str(world), True)
    assert mounts["/etc/omniopd/teachers.yaml"] == (str(scratch / "teachers.yaml"), True)
    if compose_file == HOST_COMPOSE:
        assert gateway["environment"]["REDIS_URL"] == "redis://127.0.0.1:6389/0"
        assert "6389" in " ".join(services["redis"]["healthcheck"]["test"])


def test_the_teachers_file_it_writes_serves_the_worlds_teacher(tmp_path):
    from omniopd.gateway.config import load_config

    world = tmp_path / "world"
    scratch = written_files(tmp_path, world)
    (teacher,) = load_config(scratch / "teachers.yaml").teachers
    assert (teacher.name, teacher.provider) == ("toy", "hf")
    assert Path(teacher.model) == world / "teacher"


# -- the checks ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    """``omniopd-gateway`` (the tiny world's teacher, named ``toy`` as the script names it) and
    ``omniopd-verifier`` as processes, no Redis: what the containers run, without Docker."""
    from omniopd.stack import Stack, StackConfig
    from omniopd.toy import build_tiny
    from tests.trainer.stack import service_env

    folder = tmp_path_factory.mktemp("smoke-stack")
    world = build_tiny(folder / "world")
    scratch = folder / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    env["SMOKE_DIR"] = str(scratch)
    script = f'source "{SCRIPT}" && write_stack_files "{world.root}"'
    subprocess.run(["bash", "-c", script], check=True, env=env)
    config = StackConfig(
        teachers=scratch / "teachers.yaml",
        redis=False,
        verifier_device="cpu",
        env=service_env(),
        log_dir=folder / "logs",
        startup_timeout_s=180,
    )
    with Stack(config) as running:
        yield running, world


@pytest.mark.slow
def test_the_checks_pass_against_the_services(tiny_stack, tmp_path):
    stack, world = tiny_stack
    results = tmp_path / "results.tsv"
    proc = subprocess.run(
        [
            sys.executable, str(CHECKS), "services",
            "--gateway", str(stack.gateway),
            "--verifier", str(stack.verifier),
            "--teacher", "toy",
            "--prompts", str(world.train),
            "--results", str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(checks) == {
        "verifier_readyz",
        "verifier_score",
        "gateway_health",
        "gateway_reflection",
        "gateway_teachers",
        "gateway_sample",
        "gateway_cached_repeat",
    }
    assert all(c["ok"] for c in checks.values()), checks
    assert "cached: true" in checks["gateway_cached_repeat"]["detail"]
    lines = results.read_text().splitlines()
    assert lines == [f"check\t{name}\tpass" for name in checks]


@pytest.mark.slow
def test_a_check_that_fails_says_so(tiny_stack):
    stack, _ = tiny_stack
    missing = smoke_checks.GatewaySample(str(stack.gateway), "nobody", "1+1=")
    assert not missing.teachers()["ok"]
    repeat = smoke_checks.GatewaySample(str(stack.gateway), "toy", "1+1=")
    assert "no first answer" in repeat.cached_repeat()["detail"]
    results: dict = {}
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens
    smoke_checks.run_check(results, "ready", lambda: smoke_checks.verifier_readyz(nowhere))
    assert not results["ready"]["ok"] and "ConnectError" in results["ready"]["detail"]


def test_the_train_check_reads_the_run(tmp_path):
    def run_with(rows: list[dict]) -> dict:
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return smoke_checks.train_run(tmp_path, 2)

    good = {"loss": 0.5, "forks": 4, "forks_failed": 0, "teacher_tokens": 30}
    assert run_with([{**good, "step": 1}, {**good, "step": 2}])["ok"]
    assert not run_with([{**good, "step": 1}])["ok"]
    assert not run_with([{**good, "step": 1}, {**good, "step": 2, "forks_failed": 1}])["ok"]
    assert not run_with([{**good, "step": s, "forks": 0} for s in (1, 2)])["ok"]
    assert not smoke_checks.train_run(tmp_path / "nothing", 2)["ok"]


def test_the_summary_line():
    lines = [
        "info\tdate\t2026-12-07T11:30:00Z",
        "info\thealthy_s\t44",
        "build_s\tgateway\t743",
        "image_bytes\tomniopd/gateway:local\t1420000000",
        "check\tengine\tpass",
        "check\ttrain\tpass",
        "",
    ]
    summary = smoke_checks.report(lines)
    assert summary["ok"] is True and summary["healthy_s"] == 44.0
    assert summary["build_s"] == {"gateway": 743.0}
    assert summary["image_mb"] == {"omniopd/gateway:local": 1420.0}
    assert summary["checks"] == {"engine": "pass", "train": "pass"}
    assert smoke_checks.report([*lines, "check\tteardown\tfail"])["ok"] is False
    assert smoke_checks.report(["info\tdate\tx"])["ok"] is False  # no check ran: not a pass
    with pytest.raises(ValueError):
        smoke_checks.report(["size\tx\t1"])
