"""Regenerate the committed gRPC/protobuf code in `_proto/` from the `.proto` sources beside it.

Run from anywhere: `python -m protocols.bazel_reapi.regen` (needs grpcio-tools 1.85.1, the version the
committed
output was made with). The `.proto` files are compiled with the repository root as include path, so the
generated imports are already `protocols.bazel_reapi._proto.…` and no top-level `build` package exists.
`google/rpc/status.proto` comes from googleapis-common-protos, `google/protobuf/*` from grpcio-tools.
tests/protocols/test_bazel_codegen.py checks that this reproduces the committed files byte for byte.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_DIR", "SOURCES", "generate"]

PROTO_DIR = Path(__file__).resolve().parent / "_proto"
_ROOT = PROTO_DIR.parents[2]
_REL = PROTO_DIR.relative_to(_ROOT)
SOURCES = ("semver.proto", "remote_execution.proto", "bytestream.proto")


def _include_dirs() -> list[str]:
    import grpc_tools
    from google.rpc import status_pb2

    return [
        str(_ROOT),
        str(Path(grpc_tools.__file__).parent / "_proto"),
        str(Path(status_pb2.__file__).resolve().parents[2]),
    ]


def generate(out_dir: Path) -> dict[str, bytes]:
    """Compile SOURCES into `out_dir` and return {file name: bytes} of what was generated.

    Raises:
        RuntimeError: protoc reported an error.
    """
    from grpc_tools import protoc

    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(_REL / name) for name in SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    produced = out_dir / _REL
    return {path.name: path.read_bytes() for path in sorted(produced.iterdir()) if path.is_file()}


def main() -> int:
    """Regenerate in place."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        for name in files:
            shutil.copyfile(Path(tmp) / _REL / name, PROTO_DIR / name)
    print(f"regenerated {len(files)} files in {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
