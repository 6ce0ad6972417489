"""Real Bazel 4.2.3 (Debian bazel-bootstrap) against a real `micd run` subprocess: cold builds upload, and
after
`bazel clean --expunge` the rebuild is ≥ 95% remote cache hits (counted from --execution_log_json_file), over
gRPC and over HTTP, across a daemon restart, from S3 with the disk tier wiped, and with an instance name
containing `/`. The workspace is tests/clients/bazel_ws (genrules, sh_binary + sh_test, cc_binary).

Bazel is heavy on 2 cores: every test uses its own --output_user_root and ends with `bazel shutdown`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.daemon import Daemon
from tests.fixtures.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FIXTURE = Path(__file__).parent / "bazel_ws"
MIN_HIT_RATE = 0.95


class Bazel:
    """One Bazel output root and workspace copy; `build()` runs `bazel test //...` with an execution log."""

    def __init__(self, tmp: Path, bazelrc: Path) -> None:
        self.exe = require_tool("bazel")
        self.workspace = tmp / "ws"
        shutil.copytree(FIXTURE / "workspace", self.workspace)
        self.root = tmp / "bazel-root"
        self.bazelrc = bazelrc
        self.logs = tmp
        self.runs = 0

    def _startup(self) -> list[str]:
        return [
            self.exe,
            f"--output_user_root={self.root}",
            "--host_jvm_args=-Xmx512m",
            "--nohome_rc",
            f"--bazelrc={self.bazelrc}",
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self._startup(), *args], cwd=self.workspace, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"bazel {' '.join(args)} failed:\n{result.stderr[-4000:]}"
        return result

    def build(self, *flags: str) -> tuple[int, int]:
        """`bazel test //...`; returns (remote cache hits, spawns) from the execution log."""
        self.runs += 1
        log = self.logs / f"exec-{self.runs}.json"
        overrides = [
            f"--override_repository={name}={FIXTURE / 'overrides' / name}"
            for name in ("rules_cc", "rules_java", "remote_coverage_tools")
        ]
        self.run(
            "test", "--spawn_strategy=local", f"--execution_log_json_file={log}", *overrides, *flags, "//..."
        )
        spawns = _read_log(log)
        return sum(1 for s in spawns if s.get("remoteCacheHit")), len(spawns)

    def clean(self) -> None:
        self.run("clean", "--expunge")

    def shutdown(self) -> None:
        if self.root.exists():
            subprocess.run(
                [*self._startup(), "shutdown"], cwd=self.workspace, capture_output=True, timeout=120
            )


def _read_log(path: Path) -> list[dict]:
    """Bazel 4 writes the JSON execution log as concatenated objects, not a list."""
    text, decoder, pos, out = path.read_text(), json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


def _puts(stats: dict) -> int:
    series = stats["metrics"]["series"]
    return sum(v["count"] for k, v in series.items() if k.startswith("bazel/") and k.endswith("/put"))


def _hits(stats: dict, tier: str) -> int:
    return stats["metrics"]["series"].get(f"bazel/{tier}/hit", {}).get("count", 0)


@pytest.fixture
def env(tmp_path):
    daemons: list[Daemon] = []
    state = tmp_path / "state"

    def daemon(cache: str = "cache", extra: dict[str, str] | None = None) -> Daemon:
        d = Daemon(state, tmp_path / cache, extra).start()
        daemons.append(d)
        return d

    daemon.tmp = tmp_path
    daemon.bazel = Bazel(tmp_path, state / "bazelrc")
    yield daemon
    daemon.bazel.shutdown()
    for d in daemons:
        d.stop()


def _cold_then_warm(env, daemon: Daemon, *flags: str) -> None:
    hits, spawns = env.bazel.build(*flags)
    assert spawns >= 8 and hits == 0
    assert _puts(daemon.stats()) >= spawns, "the cold build uploaded nothing"
    env.bazel.clean()
    hits, spawns = env.bazel.build(*flags)
    assert spawns >= 8 and hits / spawns >= MIN_HIT_RATE, f"{hits}/{spawns} remote cache hits"


def test_grpc_remote_cache(env):
    _cold_then_warm(env, env())


def test_http_remote_cache(env):
    _cold_then_warm(env, env(), "--config=mic-http")


def test_instance_name_with_slash(env):
    daemon = env()
    _cold_then_warm(env, daemon, "--remote_instance_name=main/inst")
    env.bazel.clean()
    hits, _ = env.bazel.build("--remote_instance_name=main/other")  # another instance: its own action cache
    assert hits == 0


def test_hits_survive_a_daemon_restart(env):
    first = env()
    hits, spawns = env.bazel.build()
    assert hits == 0 and spawns >= 8
    first.stop()
    env()  # same state dir (token, bazelrc rewritten with the new ports) and same disk cache
    env.bazel.clean()
    hits, spawns = env.bazel.build()
    assert hits / spawns >= MIN_HIT_RATE, f"{hits}/{spawns} remote cache hits after restart"


def test_hits_from_s3_with_the_disk_tier_wiped(env, s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = {
        "MIC_S3_BUCKET": bucket,
        "MIC_S3_ENDPOINT_URL": endpoint,
        "MIC_S3_REGION": "us-east-1",
        "MIC_DRAIN_TIMEOUT": "120",
    }
    first = env("cache-1", s3)
    hits, spawns = env.bazel.build()
    assert hits == 0 and spawns >= 8
    first.stop()  # SIGTERM drains the upload queue to S3
    shutil.rmtree(env.tmp / "cache-1")
    second = env("cache-2", s3)  # an empty disk tier: every hit must come from S3
    env.bazel.clean()
    hits, spawns = env.bazel.build()
    assert hits / spawns >= MIN_HIT_RATE, f"{hits}/{spawns} remote cache hits from S3"
    stats = second.stats()
    assert _hits(stats, "s3") >= spawns, stats["metrics"]["series"]
