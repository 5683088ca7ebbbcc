"""Regenerate mc/proto/ from proto/: gc_mc_pb2{.py,.pyi,_grpc.py} (the GC's
messages and the v1 services), gc_mc_legacy_pb2{.py,.pyi,_grpc.py} (the same
services under the legacy package), media_pb2{.py,.pyi,_grpc.py} (the media
handlers') and signaling_pb2{.py,.pyi} (the participants', no service).

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
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "mc/proto"
#: source -> whether it declares services (and so has a _grpc module)
SOURCES = {"gc_mc.proto": True, "gc_mc_legacy.proto": True, "media.proto": True,
           "signaling.proto": False}
OUTPUTS = tuple(name for source, services in SOURCES.items()
                for name in (f"{source[:-6]}_pb2.py", f"{source[:-6]}_pb2.pyi")
                + ((f"{source[:-6]}_pb2_grpc.py",) if services else ()))
#: grpc_tools' copy of protobuf's well-known types (google/protobuf/timestamp.proto)
WELL_KNOWN = resources.files("grpc_tools") / "_proto"


def generate(out_dir):
    """Write the generated modules into ``out_dir``; raise on a protoc error."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"-I{WELL_KNOWN}",
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
