"""The checked-in protobuf/gRPC modules are exactly what proto/ generates."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _significant(text: str) -> list[str]:
    # The protoc version line differs between grpcio-tools releases; the
    # descriptor and the code are what must match.
    return [line for line in text.splitlines()
            if not line.startswith(("# Protobuf Python Version", "GRPC_GENERATED_VERSION"))
            and "_runtime_version" not in line
            and not line.strip().isdigit() and line.strip() not in ("'',", "_runtime_version.Domain.PUBLIC,")]


def test_generated_code_is_current(tmp_path):
    _load_generator().generate(tmp_path)
    fresh = tmp_path / "logstore" / "pb"
    for name in ("journal_pb2.py", "journal_pb2_grpc.py", "journal_pb2.pyi"):
        checked_in = (ROOT / "logstore" / "pb" / name).read_text()
        assert _significant((fresh / name).read_text()) == _significant(checked_in), (
            f"logstore/pb/{name} is stale: run python3 proto/generate.py")
