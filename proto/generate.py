"""Generate the Python gRPC stubs beside proto/dffsearch/v1/search.proto.

Run from anywhere: ``python proto/generate.py [OUT_DIR]`` (default: proto/, i.e. in place).
The equivalent shell command, from the repository root, is::

    python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
        --pyi_out=proto proto/dffsearch/v1/search.proto

tests/searcher/test_proto_stubs.py regenerates into a temp dir and fails when the committed
stubs differ, so edit the .proto and re-run this script; never hand-edit the stubs.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("dffsearch/v1/search.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run grpc_tools.protoc for every .proto; return the generated files."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {proto}: {' '.join(args)}")
    return generated_files(out_dir)


def generated_files(root: Path = PROTO_ROOT) -> list[Path]:
    files = []
    for proto in PROTO_FILES:
        stem = proto[: -len(".proto")]
        files.extend(Path(root) / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES)
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(target):
        print(path)
