"""docker-compose.yml, the Dockerfiles and .env.example, checked without a Docker engine.

Compose itself validates the file (``config -q``, with every profile on): the Compose plugin
when the machine has it, else Debian's ``docker-compose`` (``make test`` installs it), which
needs no engine for ``config``. The rest reads the file as Compose resolved it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
PROFILES = ["--profile", "gpu", "--profile", "vllm"]
INSTALL_HINT = (
    "no Compose implementation found: install Debian's docker-compose "
    "(`apt-get install -y docker-compose`, which `make test` runs when it is missing) or the "
    "Docker Compose plugin (`docker compose`)"
)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def compose_command() -> list[str]:
    """``docker compose`` when the plugin works, else ``docker-compose``; fails when neither."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(INSTALL_HINT, pytrace=False)


def compose_text() -> str:
    """Both Compose files (docker-compose.yml and its host-network variant), comments left out."""
    text = COMPOSE.read_text() + ROOT.joinpath("docker-compose.host.yml").read_text()
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def compose_variables() -> set[str]:
    """Every ``${NAME}`` the Compose files read."""
    return set(VARIABLE.findall(compose_text()))


def run_compose(
    env_file: Path, *args: str, compose_file: Path = COMPOSE
) -> subprocess.CompletedProcess:
    # Only the env file decides the values: variables of the same names in this process's
    # environment (a developer's shell) are dropped.
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    return subprocess.run(
        [
            *compose_command(),
            "--project-directory",
            str(ROOT),
            "-f",
            str(compose_file),
            "--env-file",
            str(env_file),
            *PROFILES,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def empty_env(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def services(empty_env) -> dict[str, dict]:
    """The services as Compose resolved them, every default applied."""
    proc = run_compose(empty_env, "config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


@pytest.mark.parametrize("env", ["defaults", ".env.example"])
def test_compose_validates(env, empty_env):
    proc = run_compose(empty_env if env == "defaults" else ENV_EXAMPLE, "config", "-q")
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stderr}"


def test_compose_rejects_a_broken_file(tmp_path, empty_env):
    """The validation has teeth: a misspelt condition is refused."""
    broken = COMPOSE.read_text().replace("service_healthy", "service_healty", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    proc = run_compose(empty_env, "config", "-q", compose_file=tmp_path / "docker-compose.yml")
    assert proc.returncode != 0


def test_the_stack_has_the_designed_services(services):
    assert set(services) == {"redis", "gateway", "verifier", "trainer", "vllm"}
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    assert raw["trainer"]["profiles"] == ["gpu"]
    assert raw["vllm"]["profiles"] == ["vllm"]
    for name in ("redis", "gateway", "verifier"):
        assert "profiles" not in raw[name], f"{name} must start with a plain `docker compose up`"


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name


def test_every_dependency_waits_for_health(services):
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert how.get("condition") == "service_healthy", f"{name} -> {dep}: {how}"
            assert services[dep].get("healthcheck"), f"{name} waits on {dep}, which has none"
    assert set(services["gateway"]["depends_on"]) == {"redis"}
    assert set(services["verifier"]["depends_on"]) == {"redis"}
    assert set(services["trainer"]["depends_on"]) == {"gateway", "verifier"}


def test_gpu_services_reserve_nvidia_devices(services):
    for name in ("trainer", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name


def test_env_example_documents_every_variable():
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line)
    }
    used = compose_variables()
    assert used - documented == set(), "variables of the Compose files missing from .env.example"
    assert documented - used == set(), ".env.example documents variables compose never reads"


def test_env_example_defaults_match_compose():
    """A value in .env.example is the default compose uses when the line is left out."""
    found = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", compose_text())
    assert all(dict(found)[name] == value for name, value in found), "defaults disagree"
    defaults = dict(found)
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line):
            name, value = line.split("=", 1)
            assert defaults.get(name, "") == value, f"{name}: .env.example says {value!r}"


def test_keys_go_only_where_they_are_needed(services):
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"):
        holders = {n for n, s in services.items() if key in (s.get("environment") or {})}
        assert holders == {"gateway"}, key


def test_published_ports_match_what_the_services_bind(services):
    def container_ports(name: str) -> set[int]:
        ports = set()
        for p in services[name].get("ports", []):
            ports.add(
                int(p["target"])
                if isinstance(p, dict)
                else int(str(p).split(":")[-1].split("/")[0])
            )
        return ports

    assert container_ports("gateway") == {50051, 9464}
    assert container_ports("verifier") == {8100}
    assert container_ports("vllm") == {8000}
    gateway = services["gateway"]["command"]
    assert gateway[gateway.index("--port") + 1] == "50051"
    assert gateway[gateway.index("--metrics-port") + 1] == "9464"
    verifier = services["verifier"]["command"]
    assert verifier[verifier.index("--port") + 1] == "8100"
    for name in ("redis", "trainer"):
        assert not services[name].get("ports"), f"{name} needs no published port"


# -- Dockerfiles ----------------------------------------------------------------------------


def dockerfile_of(service: dict) -> Path:
    build = service["build"]
    return Path(build["context"]) / build.get("dockerfile", "Dockerfile")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(dockerfile):
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def built(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if "build" in s}


def test_built_services_have_their_own_dockerfile(services):
    files = {name: dockerfile_of(s) for name, s in built(services).items()}
    assert set(files) == {"gateway", "verifier", "trainer"}
    assert files == {
        "gateway": ROOT / "services/teacher_gateway/Dockerfile",
        "verifier": ROOT / "services/verifier/Dockerfile",
        "trainer": ROOT / "trainer/Dockerfile",
    }
    for name, service in built(services).items():
        assert Path(service["build"]["context"]).is_dir(), name
        assert files[name].is_file(), name


def test_every_copy_source_exists_and_is_sent(services):
    ignored = dockerignore()
    for name, service in built(services).items():
        context = Path(service["build"]["context"])
        for word, args in instructions(dockerfile_of(service)):
            if word not in ("COPY", "ADD"):
                continue
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            if any(p.startswith("--from") for p in shlex.split(args)):
                continue
            for source in parts[:-1]:
                assert (context / source).exists(), f"{name}: COPY {source}: not in {context}"
                top = Path(source).parts[0]
                assert not any(fnmatch.fnmatch(top, pat) for pat in ignored), (
                    f"{name}: COPY {source} is excluded by .dockerignore"
                )


def test_images_are_multistage_slim_and_not_root(services):
    for name, service in built(services).items():
        path = dockerfile_of(service)
        parts = stages(path)
        assert len(parts) >= 2, f"{name}: one stage only"
        args = dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)
        base = parts[-1][0][1].split()[0]
        for arg, value in args.items():
            base = base.replace(f"${{{arg}}}", value)
        if name == "trainer":
            assert base.startswith("nvidia/cuda:"), base
        else:
            assert "slim" in base, base
        users = [a for w, a in parts[-1] if w == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{name}: the final stage runs as root"
        assert any(w == "COPY" and "--from=build" in a for w, a in parts[-1]), name


def test_no_image_installs_vllm_by_default(services):
    for name, service in built(services).items():
        path = dockerfile_of(service)
        args = {
            a.split("=", 1)[0]: a.split("=", 1)[1]
            for w, a in instructions(path)
            if w == "ARG" and "=" in a
        }
        assert "vllm" not in args.get("EXTRAS", ""), name
        assert "vllm" not in str(service["build"].get("args", {})), name
        for word, rest in instructions(path):
            if word == "RUN":
                assert "vllm" not in rest, f"{name}: {rest}"


def test_services_without_a_gpu_get_cpu_only_torch(services):
    for name in ("gateway", "verifier"):
        path = dockerfile_of(services[name])
        args = dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", name


# -- the commands the containers run --------------------------------------------------------


def entry_argv(service: dict) -> list[str]:
    """What the container runs: compose's entrypoint or the image's, then the command."""
    entry = service.get("entrypoint")
    if entry is None:
        (found,) = [a for w, a in instructions(dockerfile_of(service)) if w == "ENTRYPOINT"][-1:]
        entry = yaml.safe_load(found)
    return [*entry, *(service.get("command") or [])]


def help_text(argv: list[str]) -> str:
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(argv)} --help failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def assert_flags_known(argv: list[str], flags: list[str]) -> None:
    text = help_text(argv)
    for flag in flags:
        if flag.startswith("--"):
            name = flag.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (
                f"{' '.join(argv)} has no flag {name}"
            )


def python_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(program to ask for --help, its arguments) for a container command run here."""
    program = argv[0]
    if program in ("python", "python3"):
        assert argv[1] == "-m", argv
        return [sys.executable, "-m", argv[2]], argv[3:]
    assert (BIN / program).is_file(), f"{program} is not a console script of this project's venv"
    return [str(BIN / program)], argv[1:]


def test_container_commands_are_the_projects_console_scripts(services):
    import tomllib

    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    for name, service in built(services).items():
        argv = entry_argv(service)
        if argv[0] == "torchrun":
            program_at = argv.index("-m")
            assert_flags_known([str(BIN / "torchrun")], argv[1:program_at])
            module, args = argv[program_at + 1], argv[program_at + 2 :]
            assert module == "omniopd.trainer", module
            assert_flags_known([sys.executable, "-m", module], args)
        else:
            assert argv[0] in scripts, f"{name} runs {argv[0]}, not one of {sorted(scripts)}"
            assert_flags_known([str(BIN / argv[0])], argv[1:])


def test_healthcheck_commands_run_here(services):
    """The probes of the built services exist with the flags used (--help); see
    tests/integrations/test_probe.py for the probes against live services."""
    for name, service in built(services).items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        program, args = python_argv(test[1:])
        kind = args[0]
        assert_flags_known([*program, kind], args[1:])
    for name in ("gateway", "verifier"):
        (found,) = [a for w, a in instructions(dockerfile_of(services[name])) if w == "HEALTHCHECK"]
        image_test = yaml.safe_load(found[found.index("CMD") + 3 :].strip())
        assert image_test == services[name]["healthcheck"]["test"][1:], name


def test_deploy_configs_validate(services):
    """The teachers files and the trainer's run.yaml with compose's own flags."""
    from omniopd.gateway.config import load_config
    from omniopd.trainer.config import parse_config

    for path in sorted((ROOT / "deploy").glob("teachers*.yaml")):
        assert load_config(path).teachers, path
    vllm_teachers = load_config(ROOT / "deploy/teachers.vllm.yaml").teachers
    vllm_model = services["vllm"]["command"][services["vllm"]["command"].index("--model") + 1]
    assert any(t.model == vllm_model and t.base_url == "http://vllm:8000/v1" for t in vllm_teachers)

    argv = services["trainer"]["command"]
    argv = [str(ROOT / "deploy/run.yaml") if a == "/etc/omniopd/run.yaml" else a for a in argv]
    config, _ = parse_config(argv)
    assert config.gateway == "gateway:50051" and config.verifier == "http://verifier:8100"
    assert config.teacher in {t.name for t in load_config(ROOT / "deploy/teachers.yaml").teachers}


def test_verifier_default_model_is_the_packaged_one(services):
    from omniopd.verifier.protocol import DEFAULT_MODEL

    assert services["verifier"]["environment"]["OMNIOPD_VERIFIER_MODEL"] == DEFAULT_MODEL


# -- what a real engine showed (deploy/smoke.sh's issue): Compose v1, ports, host networking --

HOST_COMPOSE = ROOT / "docker-compose.host.yml"
OTHER_PORTS = {
    "GATEWAY_PORT": "6101",
    "GATEWAY_METRICS_PORT": "6102",
    "VERIFIER_PORT": "6103",
    "VLLM_PORT": "6104",
    "REDIS_PORT": "6105",
}


def resolved(env_file: Path, compose_file: Path = COMPOSE) -> dict[str, dict]:
    proc = run_compose(env_file, "config", compose_file=compose_file)
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)["services"]


@pytest.fixture(scope="module")
def other_ports_env(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "ports.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in OTHER_PORTS.items()))
    return path


def test_gpu_counts_are_what_compose_v1_accepts(services):
    """Compose 1.29 keeps an interpolated ``count`` a string and then refuses it on every
    command that talks to the engine: a count must be a number or "all" once resolved."""
    for name in ("trainer", "vllm"):
        for device in services[name]["deploy"]["resources"]["reservations"]["devices"]:
            count = device.get("count")
            assert count is None or count == "all" or isinstance(count, int), (name, count)


@pytest.mark.parametrize("compose_file", [COMPOSE, HOST_COMPOSE], ids=["bridge", "host"])
def test_healthchecks_and_services_follow_the_configured_ports(other_ports_env, compose_file):
    """With other ports (a second stack, host networking) each service listens on its port and
    its healthcheck asks that port, so it is not reported unhealthy."""
    services = resolved(other_ports_env, compose_file)
    gateway, verifier = services["gateway"], services["verifier"]
    assert gateway["command"][gateway["command"].index("--port") + 1] == "6101"
    assert gateway["command"][gateway["command"].index("--metrics-port") + 1] == "6102"
    assert verifier["command"][verifier["command"].index("--port") + 1] == "6103"
    assert gateway["healthcheck"]["test"][-1] == "127.0.0.1:6101"
    assert verifier["healthcheck"]["test"][-1] == "http://127.0.0.1:6103/readyz"
    trainer = services["trainer"]["command"]
    assert trainer[trainer.index("--gateway") + 1].endswith(":6101")
    assert trainer[trainer.index("--verifier") + 1].endswith(":6103")
    if compose_file == HOST_COMPOSE:
        assert "6105" in " ".join(services["redis"]["healthcheck"]["test"])
        assert "6104" in " ".join(services["vllm"]["healthcheck"]["test"])
        assert gateway["environment"]["REDIS_URL"] == "redis://127.0.0.1:6105/0"


def test_the_host_network_variant_is_the_same_stack_on_the_hosts_network(empty_env):
    """docker-compose.host.yml: valid, every service on the host's network with nothing
    published (a Compose override cannot remove ``ports:``), and otherwise the same services
    as docker-compose.yml: only addresses and ports may differ."""
    proc = run_compose(empty_env, "config", "-q", compose_file=HOST_COMPOSE)
    assert proc.returncode == 0, proc.stderr
    host, bridge = resolved(empty_env, HOST_COMPOSE), resolved(empty_env)
    assert set(host) == set(bridge)
    networking = {"network_mode", "networks", "ports", "command", "entrypoint", "healthcheck"}
    for name in bridge:
        assert host[name]["network_mode"] == "host", name
        assert not host[name].get("ports"), name
        same = {k: v for k, v in bridge[name].items() if k not in networking}
        other = {k: v for k, v in host[name].items() if k not in networking}
        for env in (same, other):
            env.get("environment", {}).pop("REDIS_URL", None)
        assert other == same, name
        for key in ("command", "healthcheck"):  # the same but for addresses and ports
            words = [w for w in json.dumps(host[name].get(key)).split('"') if w.strip(", ")]
            base = [w for w in json.dumps(bridge[name].get(key)).split('"') if w.strip(", ")]
            assert len([w for w in words if w not in base]) <= 8, (name, key)
