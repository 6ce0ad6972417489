"""The committed generated code is exactly what `python -m protocols.bazel_reapi.regen` produces."""

from __future__ import annotations

import re

from protocols.bazel_reapi import regen


def test_regenerating_reproduces_the_committed_files(tmp_path):
    generated = regen.generate(tmp_path)
    assert sorted(generated) == sorted(
        f"{stem}{suffix}"
        for stem in ("semver", "remote_execution", "bytestream")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    )
    for name, data in generated.items():
        assert (regen.PROTO_DIR / name).read_bytes() == data, (
            f"{name} differs: run python -m protocols.bazel_reapi.regen"
        )


def test_no_top_level_build_package_is_generated(tmp_path):
    regen.generate(tmp_path)
    assert not (tmp_path / "build").exists()
    text = (regen.PROTO_DIR / "remote_execution_pb2.py").read_text()
    assert not re.search(r"^(from build[. ]|import build\b)", text, re.M)
