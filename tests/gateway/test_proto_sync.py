"""The committed stubs are exactly what ``make proto`` generates from the .proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "proto" / "v1"


def test_generated_stubs_match_the_committed_ones(tmp_path):
    out = tmp_path / "v1"
    subprocess.run(
        [sys.executable, "-m", "omniopd.proto.generate", "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    generated = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in COMMITTED.iterdir() if p.is_file()}
    assert sorted(generated) == sorted(committed), "run `make proto` and commit proto/v1"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit proto/v1"


def test_stubs_import_from_the_installed_package():
    from omniopd.proto.v1 import gateway_pb2, gateway_pb2_grpc

    assert gateway_pb2.DESCRIPTOR.package == "omniopd.v1"
    assert hasattr(gateway_pb2_grpc, "TeacherGatewayStub")
    service = gateway_pb2.DESCRIPTOR.services_by_name["TeacherGateway"]
    assert [m.name for m in service.methods] == ["SampleChunks", "StreamChunks", "ListTeachers"]
