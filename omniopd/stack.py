"""``omniopd-stack``: the gateway, the verifier and a Redis as child processes, without Docker.

    omniopd-stack up --config teachers.yaml [--gateway-port 0] [--verifier-port 0] [--no-redis]

starts ``omniopd-gateway`` and ``omniopd-verifier`` (and ``redis-server`` when it is on PATH and
``REDIS_URL`` is unset) on free or given ports, waits for their health checks (gRPC health for
the gateway, ``GET /readyz`` for the verifier, ``PING`` for Redis), prints their addresses, and
stops them together on Ctrl-C or SIGTERM, or as soon as one of them dies, naming it, its exit
code and its last lines of output.

From Python (the demo and the tests use it this way)::

    with Stack(StackConfig(teachers=Path("teachers.yaml"))) as stack:
        run_something(gateway=stack.gateway, verifier=stack.verifier)
        stack.check()  # raises ServiceDied if a service has died meanwhile

Children run in their own process group, so a Ctrl-C at the terminal reaches the launcher only
and the launcher stops them in order. On Linux they also get SIGTERM if the thread that started
them dies (``PR_SET_PDEATHSIG``), so a launcher killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from omniopd.log import add_logging_args, configure_from_args
from omniopd.probe import grpc_ready, http_ready
from omniopd.processes import Child, console_script, free_port

log = logging.getLogger("omniopd.stack")

STOP_GRACE_S = 20.0  # the gateway drains for 5 s by default; then SIGKILL

GATEWAY_READY = re.compile(r"serving \d+ teacher\(s\) on (?P<host>\S+):(?P<port>\d+) \(")
# A throwaway Redis: nothing saved to disk, reachable only where it binds.
REDIS_ARGS = ("redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no")
VERIFIER_READY = re.compile(r"verifier on http://(?P<host>\S+):(?P<port>\d+) \(")


class StackError(RuntimeError):
    """A service could not start, or stopped on its own."""


class StartInterrupted(StackError):
    """The stop event was set while the services were starting (they have been stopped)."""


class ServiceDied(StackError):
    """A service exited while the stack was up (or while it was starting)."""

    def __init__(self, child: Child, when: str) -> None:
        self.child = child
        super().__init__(f"{child.name} {child.exit_reason()} {when}{child.tail_text()}")


@dataclass(frozen=True)
class StackConfig:
    """What to start. Ports 0 pick free ones; ``redis=None`` starts a Redis only when
    ``redis-server`` is on PATH and ``REDIS_URL`` is unset (children inherit a set one)."""

    teachers: Path
    host: str = "127.0.0.1"
    gateway_port: int = 0
    verifier_port: int = 0
    redis: bool | None = None
    redis_port: int = 0
    verifier_model: str | None = None
    verifier_device: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra variables for every child
    log_dir: Path | None = None  # each child's output also goes to <log_dir>/<name>.log
    startup_timeout_s: float = 300.0


def _connect_host(host: str) -> str:
    """Where to reach a service bound to ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _hostport(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_ready(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class Stack:
    """Gateway, verifier and optional Redis, started together and stopped together.

    After :meth:`start` (or entering the ``with`` block): ``gateway`` is ``host:port`` for
    ``--gateway``, ``verifier`` the base URL for ``--verifier``, ``redis_url`` the Redis the
    services share (``None`` for none). ``echo(name, line)`` sees every line the children print.
    """

    def __init__(
        self, config: StackConfig, *, echo: Callable[[str, str], None] | None = None
    ) -> None:
        self.config = config
        self.echo = echo
        self.children: dict[str, Child] = {}
        self.gateway: str | None = None
        self.verifier: str | None = None
        self.redis_url: str | None = os.environ.get("REDIS_URL") or None
        self._log_files: list[IO[str]] = []
        self._health: dict[str, str] = {}  # each service's last health answer, while starting

    # -- starting ----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log_file = None
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = (self.config.log_dir / f"{name}.log").open("a", encoding="utf-8")
            self._log_files.append(log_file)
        child = Child(name, args, env, log_file=log_file, echo=self.echo)
        self.children[name] = child
        log.info("started %s (pid %d): %s", name, child.pid, " ".join(args))
        return child

    def _wants_redis(self) -> bool:
        cfg = self.config
        if cfg.redis is not None:
            if cfg.redis and shutil.which("redis-server") is None:
                raise StackError("a Redis was asked for, but redis-server is not on PATH")
            return cfg.redis
        return shutil.which("redis-server") is not None and not os.environ.get("REDIS_URL")

    def start(self, stop: threading.Event | None = None) -> Self:
        """:meth:`launch`, then :meth:`wait_ready`; on any failure, or when ``stop`` is set
        meanwhile, stop what was started and raise."""
        try:
            self.launch()
            self.wait_ready(stop)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start every service without waiting for it (the caller can work meanwhile, then
        call :meth:`wait_ready`; it must call :meth:`stop` whatever happens)."""
        cfg = self.config
        if not cfg.teachers.is_file():
            raise StackError(f"the gateway's config {cfg.teachers} does not exist")
        env = {**os.environ, **cfg.env}
        if self._wants_redis():
            port = cfg.redis_port or free_port(cfg.host)
            self._spawn("redis", [*REDIS_ARGS, "--port", str(port), "--bind", cfg.host], env)
            self.redis_url = f"redis://{_hostport(_connect_host(cfg.host), port)}/0"
            env["REDIS_URL"] = self.redis_url
        common = ["--host", cfg.host]
        verifier = [*common, "--port", str(cfg.verifier_port)]
        if cfg.verifier_model:
            verifier += ["--model", cfg.verifier_model]
        if cfg.verifier_device:
            verifier += ["--device", cfg.verifier_device]
        # Both start at once: each loads its models while the other does.
        self._spawn(
            "gateway",
            [
                *console_script("omniopd-gateway", "omniopd.gateway.cli"),
                *("--config", str(cfg.teachers), *common, "--port", str(cfg.gateway_port)),
            ],
            env,
        )
        self._spawn(
            "verifier",
            [*console_script("omniopd-verifier", "omniopd.verifier.cli"), *verifier],
            env,
        )

    def wait_ready(self, stop: threading.Event | None = None) -> None:
        """Wait for every health check, at most ``startup_timeout_s``; raise :class:`ServiceDied`
        if a service exits meanwhile, :class:`StartInterrupted` if ``stop`` is set."""
        self._wait_ready(time.monotonic() + self.config.startup_timeout_s, stop)

    def _wait_ready(self, deadline: float, stop: threading.Event | None) -> None:
        pending = set(self.children)
        while pending:
            if stop is not None and stop.is_set():
                raise StartInterrupted("interrupted while starting")
            for name in sorted(pending):
                child = self.children[name]
                if child.exited():
                    raise ServiceDied(child, "while starting")
                if self._probe(name, child):
                    pending.discard(name)
                    log.info("%s is ready", name)
            if not pending:
                return
            if time.monotonic() > deadline:
                name = sorted(pending)[0]
                child = self.children[name]
                health = self._health.get(name, "its address not printed yet")
                raise StackError(
                    f"{name} (pid {child.pid}) was not ready within "
                    f"{self.config.startup_timeout_s:.0f} s (last health check: {health})"
                    f"{child.tail_text()}"
                )
            if stop is not None:
                stop.wait(0.2)
            else:
                time.sleep(0.2)

    def _probe(self, name: str, child: Child) -> bool:
        if name == "redis":
            assert self.redis_url is not None
            return redis_ready(self.redis_url)
        pattern = GATEWAY_READY if name == "gateway" else VERIFIER_READY
        m = child.search(pattern)
        if m is None:
            return False  # still loading; its port is not known yet
        address = _hostport(_connect_host(m["host"]), m["port"])
        if name == "gateway":
            self.gateway = address
            ok, self._health[name] = grpc_ready(address, timeout_s=2.0)
            return ok
        self.verifier = f"http://{address}"
        ok, self._health[name] = http_ready(f"{self.verifier}/readyz", timeout_s=2.0)
        return ok

    # -- while up ----------------------------------------------------------------------

    def dead(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children.values() if c.exited()), None)

    def check(self) -> None:
        """Raise :class:`ServiceDied` if a service has stopped on its own."""
        if (child := self.dead()) is not None:
            raise ServiceDied(child, "while the stack was up")

    def wait(self, stop: threading.Event | None = None, poll_s: float = 0.2) -> Child | None:
        """Block until a child dies (returned) or ``stop`` is set (``None``)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if (child := self.dead()) is not None:
                return child
            stop.wait(poll_s)
        return None

    def addresses(self) -> dict[str, object]:
        return {
            "gateway": self.gateway,
            "verifier": self.verifier,
            "redis": self.redis_url,
            "pids": {name: child.pid for name, child in self.children.items()},
        }

    # -- stopping ----------------------------------------------------------------------

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the services together, SIGKILL what is left after ``grace_s``; Redis last."""
        services = [c for n, c in self.children.items() if n != "redis"]
        for child in services:
            child.stop()
        deadline = time.monotonic() + grace_s
        for child in services:
            child.wait(deadline - time.monotonic())
        if (redis_child := self.children.get("redis")) is not None:
            redis_child.stop()
            redis_child.wait(5.0)
        for f in self._log_files:
            f.close()
        self._log_files.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the command --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omniopd-stack",
        description="Run the teacher gateway, the verifier and a Redis as child processes.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack; Ctrl-C stops it")
    up.add_argument("--config", type=Path, default=Path("teachers.yaml"), help="teachers.yaml")
    up.add_argument("--host", default="127.0.0.1", help="address every service binds")
    up.add_argument("--gateway-port", type=int, default=0, help="0: a free port (default)")
    up.add_argument("--verifier-port", type=int, default=0, help="0: a free port (default)")
    up.add_argument("--redis-port", type=int, default=0, help="0: a free port (default)")
    redis = up.add_mutually_exclusive_group()
    redis.add_argument(
        "--redis", dest="redis", action="store_true", default=None, help="start a redis-server"
    )
    redis.add_argument("--no-redis", dest="redis", action="store_false", help="never start one")
    up.add_argument("--verifier-model", help="sentence-transformers name or path")
    up.add_argument("--verifier-device", help="torch device for the verifier, e.g. cpu")
    up.add_argument(
        "--threads", type=int, help="CPU threads per service (OMP_NUM_THREADS); default: torch's"
    )
    up.add_argument("--log-dir", type=Path, help="also write each service's output here")
    up.add_argument("--quiet", action="store_true", help="do not echo the services' output")
    up.add_argument("--startup-timeout", type=float, default=300.0, help="seconds (default 300)")
    add_logging_args(up)
    return p


def _echo(name: str, line: str) -> None:
    sys.stderr.write(f"{name:<8} | {line}\n")
    sys.stderr.flush()


def format_addresses(stack: Stack, seconds: float) -> str:
    rows = [("gateway", stack.gateway), ("verifier", stack.verifier), ("redis", stack.redis_url)]
    lines = [f"omniopd-stack: up in {seconds:.1f} s"]
    for name, address in rows:
        if address is None:
            continue
        pid = stack.children[name].pid if name in stack.children else None
        note = f"pid {pid}" if pid is not None else "from REDIS_URL"
        lines.append(f"  {name:<9} {address:<32} {note}")
    lines.append("Ctrl-C (or SIGTERM) stops them all.")
    return "\n".join(lines)


def up(args: argparse.Namespace) -> int:
    env = {}
    if args.threads:
        env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    config = StackConfig(
        teachers=args.config,
        host=args.host,
        gateway_port=args.gateway_port,
        verifier_port=args.verifier_port,
        redis=args.redis,
        redis_port=args.redis_port,
        verifier_model=args.verifier_model,
        verifier_device=args.verifier_device,
        env=env,
        log_dir=args.log_dir,
        startup_timeout_s=args.startup_timeout,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()
        if len(received) == 1:
            # A second signal while stopping falls through to the default: exit at once.
            signal.signal(signum, signal.default_int_handler)

    start = time.monotonic()
    stack = Stack(config, echo=None if args.quiet else _echo)
    # Ctrl-C during start-up stops the children started so far (Stack.start cleans up).
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            stack.start(stop)
        except StartInterrupted:
            print("omniopd-stack: interrupted while starting; stopped", file=sys.stderr)
            return 130
        except StackError as err:
            print(f"omniopd-stack: {err}", file=sys.stderr)
            return 1
        print(format_addresses(stack, time.monotonic() - start))
        print(json.dumps(stack.addresses()), flush=True)
        dead = stack.wait(stop)
        if dead is not None:
            err = ServiceDied(dead, "while the stack was up")
            print(f"omniopd-stack: {err}; stopping the others", file=sys.stderr)
            stack.stop()
            return 1
        name = signal.Signals(received[0]).name if received else "a signal"
        print(f"omniopd-stack: {name}: stopping every service", file=sys.stderr)
        stack.stop()
        print("omniopd-stack: stopped", file=sys.stderr)
        return 0
    finally:
        stack.stop()  # idempotent: whatever happened above, no child outlives the command
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_from_args(args)
    if args.command == "up":
        return up(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse checks the choices


if __name__ == "__main__":
    sys.exit(main())
