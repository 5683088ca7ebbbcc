"""Regenerate mc/proto/ from proto/: gc_mc_pb2{.py,.pyi,_grpc.py} (the GC's
contract) and signaling_pb2{.py,.pyi} (the participants', no service).

The modules are committed so that ``pip install .`` needs no build step;
tests/test_proto.py runs this into a temp dir and fails on any difference, so
run it after every change to the .proto:

    .venv/bin/python scripts/gen_proto.py [OUTPUT_DIR]   # default: mc/proto

protoc sees the source under the virtual path ``mc/proto/`` so the generated
grpc module imports ``from mc.proto import gc_mc_pb2`` without post-processing.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "mc/proto"
OUTPUTS = ("gc_mc_pb2.py", "gc_mc_pb2.pyi", "gc_mc_pb2_grpc.py",
           "signaling_pb2.py", "signaling_pb2.pyi")
SOURCES = ("gc_mc.proto", "signaling.proto")


def generate(out_dir):
    """Write the generated modules into ``out_dir``; raise on a protoc error."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(f"{PACKAGE}/{source}" for source in SOURCES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on proto/{', proto/'.join(SOURCES)}")
        for name in OUTPUTS:
            shutil.copyfile(Path(tmp, PACKAGE, name), out_dir / name)
    return [out_dir / name for name in OUTPUTS]


def main(argv):
    out_dir = Path(argv[1]) if len(argv) > 1 else ROOT / PACKAGE
    for path in generate(out_dir):
        print(path)


if __name__ == "__main__":
    main(sys.argv)
