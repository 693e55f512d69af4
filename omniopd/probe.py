"""Readiness probes for containers and supervisors: exit 0 when the service is ready, else 1.

    python -m omniopd.probe grpc 127.0.0.1:50051              # gateway: grpc.health.v1 SERVING
    python -m omniopd.probe http http://127.0.0.1:8100/readyz  # verifier: HTTP 2xx
    python -m omniopd.probe file runs/x/metrics.jsonl --max-age 1800   # trainer: still stepping

The compose file's healthchecks run these. The gRPC probe asks the standard health service
(open without a token, as on the gateway) for the overall status, or for ``--service``; the HTTP
probe needs nothing beyond the standard library. The file probe passes while a file was written
in the last ``--max-age`` seconds (the trainer appends a line to ``metrics.jsonl`` every step).
One line on stderr says why a probe failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def grpc_ready(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether ``grpc.health.v1.Health/Check`` at ``address`` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return False, f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def http_ready(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether ``GET url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return False, str(getattr(err, "reason", err))


def file_fresh(path: str, max_age_s: float) -> tuple[bool, str]:
    """Whether ``path`` exists and was modified in the last ``max_age_s`` seconds."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except OSError as err:
        return False, err.strerror or str(err)
    return age <= max_age_s, f"last written {age:.0f} s ago (limit {max_age_s:.0f} s)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omniopd.probe",
        description="Exit 0 when a service is ready (gRPC health SERVING, HTTP 2xx, or a file "
        "written recently), else 1.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    g = kinds.add_parser("grpc", help="gRPC health check (the gateway)")
    g.add_argument("address", help="host:port")
    g.add_argument("--service", default="", help="service name to check (default: overall)")
    g.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    h = kinds.add_parser("http", help="HTTP GET answered 2xx (the verifier's /readyz)")
    h.add_argument("url")
    h.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    f = kinds.add_parser("file", help="a file written recently (the trainer's metrics.jsonl)")
    f.add_argument("path")
    f.add_argument("--max-age", type=float, default=1800.0, help="seconds (default 1800)")
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        ok, why = grpc_ready(args.address, args.service, args.timeout)
        target = args.address
    elif args.kind == "http":
        ok, why = http_ready(args.url, args.timeout)
        target = args.url
    else:
        ok, why = file_fresh(args.path, args.max_age)
        target = args.path
    if not ok:
        print(f"not ready: {target}: {why}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
