"""Regenerate the Python protobuf/gRPC modules from proto/*.proto.

Run `python3 proto/generate.py` after editing a .proto file. The output lands
in logstore/pb/ (the lowest layer, so every package may import it); the
virtual include path makes the generated gRPC module import its messages as
`logstore.pb.journal_pb2`. Generated files are never edited by hand.
"""

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def generate(out_dir: pathlib.Path = ROOT) -> None:
    protos = sorted(p.name for p in (ROOT / "proto").glob("*.proto"))
    args = ["protoc", f"-Ilogstore/pb={ROOT / 'proto'}", f"-I{protoc_include()}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}"]
    if protoc.main(args + [f"logstore/pb/{name}" for name in protos]) != 0:
        sys.exit("protoc failed")


def protoc_include() -> str:
    import grpc_tools
    return str(pathlib.Path(grpc_tools.__file__).parent / "_proto")


if __name__ == "__main__":
    generate()
